"""Batches gathered on the accelerator: a split's flat arrays go to the device once, and every batch is
indexed and padded there, so a training step copies only its row indices from the host."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from churnwatch.features.encode import EncodedSequences
from churnwatch.pipeline.batch import EventBatch, padded_width


def device_bytes(seqs: EncodedSequences, aggregates: np.ndarray | None = None) -> int:
    """Device memory the split takes as `DeviceSequenceDataset` (categoricals stay int32)."""
    arrays = [seqs.offsets, seqs.cat, seqs.num, seqs.static_cat, seqs.static_num, seqs.label, seqs.tte]
    arrays.extend([seqs.tte_observed, seqs.weight])
    if aggregates is not None:
        arrays.append(aggregates)
    return int(sum(np.asarray(a).nbytes for a in arrays))


class DeviceSequenceDataset(Dataset):
    """Like `SequenceDataset` (indexed by a list of rows, returns a whole padded `EventBatch`, the same
    tensors `pad_batch` builds), but the arrays live on `device` and the gathering runs there."""

    def __init__(
        self,
        seqs: EncodedSequences,
        aggregates: np.ndarray | None,
        device: torch.device | str,
        width_multiple: int = 1,
    ):
        self.device = torch.device(device)
        self.width_multiple = width_multiple

        def put(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), device=self.device).to(dtype)

        self.lengths = seqs.lengths  # on the host: each batch's width without a device sync
        self.offsets = put(seqs.offsets, torch.int64)
        self.cat = put(seqs.cat, torch.int32)
        self.num = put(seqs.num, torch.float32)
        self.static_cat = put(seqs.static_cat, torch.int64)
        self.static_num = put(seqs.static_num, torch.float32)
        self.label = put(seqs.label, torch.float32)
        self.tte = put(seqs.tte, torch.float32)
        self.tte_observed = put(seqs.tte_observed, torch.float32)
        self.weight = put(seqs.weight, torch.float32)
        self.aggregates = put(
            aggregates if aggregates is not None else np.zeros((len(seqs), 0), np.float32), torch.float32
        )

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, rows: Sequence[int] | np.ndarray) -> EventBatch:
        host_rows = np.asarray(rows, dtype=np.int64)
        width = padded_width(self.lengths[host_rows].max() if len(host_rows) else 1, self.width_multiple)
        index = torch.as_tensor(host_rows, device=self.device)
        start = self.offsets[index]
        lengths = self.offsets[index + 1] - start
        steps = torch.arange(width, device=self.device)
        real = steps[None, :] < lengths[:, None]
        position = torch.where(real, start[:, None] + steps[None, :], 0)
        cat = self.cat[position].long() * real[..., None]
        num = self.num[position] * real[..., None]
        return EventBatch(
            cat=cat,
            num=num,
            lengths=lengths,
            static_cat=self.static_cat[index],
            static_num=self.static_num[index],
            aggregates=self.aggregates[index],
            label=self.label[index],
            index=index,
            tte=self.tte[position] * real,
            tte_observed=self.tte_observed[position] * real,
            weight=self.weight[index],
        )
