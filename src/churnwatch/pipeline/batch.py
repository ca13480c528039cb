"""The one event-batch type (padded tensors + lengths), the dataset that slices it, a bucketing sampler."""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from churnwatch.errors import ConfigError
from churnwatch.features.encode import EncodedSequences
from churnwatch.features.window import ranges


@dataclass
class EventBatch:
    """Right-padded event tensors; the last *real* step of row i is at lengths[i] - 1."""

    cat: torch.Tensor
    """long (B, L, n_cat); 0 = padding. (int32 in scoring's batches, `pad_batch(codes=)`.)"""
    num: torch.Tensor
    """float (B, L, n_num); 0 at padding."""
    lengths: torch.Tensor
    """long (B,); every row has at least one event."""
    static_cat: torch.Tensor
    static_num: torch.Tensor
    aggregates: torch.Tensor
    """float (B, n_agg), standardised; (B, 0) when the model does not use aggregates."""
    label: torch.Tensor
    index: torch.Tensor
    """Row positions in the dataset, to join predictions back to customer ids."""
    tte: torch.Tensor
    """float (B, L): days from each step to the next activity or to its censoring; 0 at padding."""
    tte_observed: torch.Tensor
    """float (B, L): 1 where `tte` ends at an observed activity; 0 where censored and at padding."""
    weight: torch.Tensor
    """float (B,): each row's weight in the training loss (1 unless `data.sample_weight`)."""

    @property
    def mask(self) -> torch.Tensor:
        """bool (B, L): True at real events."""
        steps = torch.arange(self.cat.shape[1], device=self.lengths.device)
        return steps[None, :] < self.lengths[:, None]

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> EventBatch:
        return EventBatch(
            **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)}
        )

    def pin_memory(self) -> EventBatch:
        return EventBatch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})


def pad_batch(
    seqs: EncodedSequences,
    rows: np.ndarray,
    aggregates: np.ndarray | None = None,
    width_multiple: int = 1,
    codes: type[np.integer] = np.int64,
) -> EventBatch:
    """Gather `rows` from the flat arrays into one padded EventBatch (vectorised, no per-row loop), with
    categorical `codes` of that type: int32 halves the largest tensor of a batch made ahead of the forward
    (scoring), and embeddings read either."""
    rows = np.asarray(rows, dtype=np.int64)
    return pad_steps(
        seqs, rows, seqs.offsets[rows], seqs.offsets[rows + 1], aggregates, width_multiple, codes
    )


def padded_width(longest: int, width_multiple: int = 1) -> int:
    """A batch's padded width: its longest row (at least 1) rounded up to a multiple of `width_multiple`,
    so a run sees few distinct shapes (`data.pad_multiple`)."""
    return -(-max(int(longest), 1) // width_multiple) * width_multiple


def auto_width_multiple(device: torch.device) -> int:
    """`data.pad_multiple=auto`: 16 on a GPU, which picks kernels and allocates per shape (the first
    epoch's new widths cost most of its early steps, docs/BENCHMARKS.md), 1 on CPU, where every padded
    step is computed."""
    return 16 if device.type == "cuda" else 1


def pad_steps(
    seqs: EncodedSequences,
    rows: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    aggregates: np.ndarray | None = None,
    width_multiple: int = 1,
    codes: type[np.integer] = np.int64,
) -> EventBatch:
    """One padded EventBatch of rows whose steps are [starts, ends) of the flat arrays: whole rows
    (`pad_batch`), or slices of them (self-supervised views, models/coles.py)."""
    lengths = (ends - starts).astype(np.int64)
    width = padded_width(lengths.max() if len(rows) else 1, width_multiple)
    events = ranges(starts, ends)
    row_of = np.repeat(np.arange(len(rows)), lengths)
    step = np.arange(len(events)) - np.repeat(np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    cat = np.zeros((len(rows), width, seqs.cat.shape[1]), dtype=codes)
    num = np.zeros((len(rows), width, seqs.num.shape[1]), dtype=np.float32)
    cat[row_of, step] = seqs.cat[events]
    num[row_of, step] = seqs.num[events]
    tte = np.zeros((len(rows), width), dtype=np.float32)
    observed = np.zeros((len(rows), width), dtype=np.float32)
    tte[row_of, step] = seqs.tte[events]
    observed[row_of, step] = seqs.tte_observed[events]
    agg = aggregates[rows] if aggregates is not None else np.zeros((len(rows), 0), dtype=np.float32)
    return EventBatch(
        cat=torch.from_numpy(cat),
        num=torch.from_numpy(num),
        lengths=torch.from_numpy(lengths.astype(np.int64)),
        static_cat=torch.from_numpy(seqs.static_cat[rows].astype(codes)),
        static_num=torch.from_numpy(np.ascontiguousarray(seqs.static_num[rows])),
        aggregates=torch.from_numpy(np.ascontiguousarray(agg, dtype=np.float32)),
        label=torch.from_numpy(seqs.label[rows].astype(np.float32)),
        index=torch.from_numpy(rows),
        tte=torch.from_numpy(tte),
        tte_observed=torch.from_numpy(observed),
        weight=torch.from_numpy(np.ascontiguousarray(seqs.weight[rows], dtype=np.float32)),
    )


class SequenceDataset(Dataset):
    """Indexed by a *list* of row positions, it returns a whole EventBatch: batches are slices."""

    def __init__(self, seqs: EncodedSequences, aggregates: np.ndarray | None = None, width_multiple: int = 1):
        if aggregates is not None and len(aggregates) != len(seqs):
            raise ValueError(f"aggregates have {len(aggregates)} rows for {len(seqs)} sequences")
        self.seqs = seqs
        self.aggregates = aggregates
        self.width_multiple = width_multiple

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, rows: Sequence[int] | np.ndarray) -> EventBatch:
        return pad_batch(self.seqs, np.asarray(rows), self.aggregates, self.width_multiple)

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started with spawn/forkserver receive the dataset pickled. A memory-mapped
        # array would pickle its whole contents into every worker: send the file to reopen instead.
        state = dict(self.__dict__)
        state["seqs"] = {f.name: MappedArray.wrap(getattr(self.seqs, f.name)) for f in fields(self.seqs)}
        state["aggregates"] = MappedArray.wrap(self.aggregates)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["seqs"] = EncodedSequences(**{k: MappedArray.unwrap(v) for k, v in state["seqs"].items()})
        state["aggregates"] = MappedArray.unwrap(state["aggregates"])
        self.__dict__.update(state)


@dataclass(frozen=True)
class MappedArray:
    """A read-only memory map of a whole file, by reference: what a pickled worker dataset carries."""

    filename: str
    offset: int
    dtype: str
    shape: tuple[int, ...]
    order: str

    @classmethod
    def wrap(cls, arr: Any) -> Any:
        """A reference for a read-only map of a whole file (np.load(mmap_mode="r")), else `arr` itself."""
        # a view of a map has an array as its base; only the whole file can be reopened by name
        whole_file = isinstance(arr, np.memmap) and isinstance(arr.base, mmap.mmap)
        if whole_file and arr.mode == "r" and arr.filename:
            order = "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
            return cls(arr.filename, int(arr.offset), arr.dtype.str, tuple(arr.shape), order)
        return arr

    @staticmethod
    def unwrap(value: Any) -> Any:
        if not isinstance(value, MappedArray):
            return value
        if not math.prod(value.shape):
            return np.zeros(value.shape, dtype=value.dtype)  # nothing to map
        return np.memmap(
            value.filename, value.dtype, "r", offset=value.offset, shape=value.shape, order=value.order
        )


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length rows, so padding stays small; shuffled per epoch, deterministic per seed.

    Rows are shuffled, cut into pools of `pool_batches` batches, sorted by length inside each pool, split
    into batches, and the batches shuffled. With `num_replicas` > 1 each rank takes every n-th batch (the
    batch count is padded up to a multiple of num_replicas so all ranks step together).
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = True,
        bucket: bool = True,
        pool_batches: int = 50,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        self.lengths = np.asarray(lengths)
        self.batch_size, self.shuffle, self.bucket = batch_size, shuffle, bucket
        self.pool = batch_size * pool_batches
        self.drop_last, self.seed = drop_last, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        if self.bucket:
            pools = [order[i : i + self.pool] for i in range(0, len(order), self.pool)]
            order = (
                np.concatenate([p[np.argsort(-self.lengths[p], kind="stable")] for p in pools])
                if pools
                else order
            )
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.num_replicas > 1 and batches:
            total = math.ceil(len(batches) / self.num_replicas) * self.num_replicas
            batches = (batches * math.ceil(total / len(batches)))[:total]
            batches = batches[self.rank :: self.num_replicas]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._batches():
            yield batch.tolist()

    def __len__(self) -> int:
        n = (
            len(self.lengths) // self.batch_size
            if self.drop_last
            else math.ceil(len(self.lengths) / self.batch_size)
        )
        return math.ceil(n / self.num_replicas) if self.num_replicas > 1 else n
