"""Lightning DataModule: serves train/val/test EventBatches from the encoded snapshots."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from churnwatch.config.schema import DataConfig
from churnwatch.errors import ConfigError
from churnwatch.features.encode import TIME_NUMERIC
from churnwatch.pipeline.batch import LengthBucketBatchSampler, SequenceDataset, auto_width_multiple
from churnwatch.pipeline.build import build_data
from churnwatch.pipeline.dataset import ChurnData, Split, as_dict
from churnwatch.pipeline.device_batches import DeviceSequenceDataset, device_bytes
from churnwatch.runtime.compat import lightning_leaf_spec, quiet_litlogger_tip

TIME_FEATURES = tuple(f.name for f in TIME_NUMERIC)
lightning_leaf_spec()  # Lightning wraps these loaders with a call torch deprecates (see compat.py)
quiet_litlogger_tip()


class ChurnDataModule(L.LightningDataModule):
    """Builds the data once (`setup`), then hands out loaders whose batches are slices of flat arrays."""

    def __init__(self, data: Mapping[str, Any] | DictConfig, device: torch.device | str | None = None):
        super().__init__()
        self.save_hyperparameters({"data": as_dict(data)})
        self.cfg = self.hparams["data"]
        self.data: ChurnData | None = None
        self.device = torch.device(device) if device is not None else None
        """Where batches go without a Trainer (a benchmark, a notebook): what `data.device_gather` and
        `data.pad_multiple`'s auto settings decide for; with a Trainer, its device."""

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.data = build_data(self.cfg)

    def feature_spec(self) -> dict[str, Any]:
        """Input sizes a model needs, from the fitted encoders (saved in the model's hyperparameters)."""
        enc = self.data.encoder
        return {
            "cat_cardinalities": enc.cat_cardinalities,
            "cat_names": enc.cat_names,
            "n_num": len(enc.num_names),
            "num_names": enc.num_names,
            "time_index": [enc.num_names.index(n) for n in TIME_FEATURES],
            "static_cat_cardinalities": enc.static_cat_cardinalities,
            "n_static_num": len(enc.static_num_names),
            "n_aggregates": len(self.data.train.aggregates.names) if self.cfg.get("use_aggregates") else 0,
            "max_len": enc.max_len,
            "horizon_days": self.data.plan.horizon_days,
            # the age feature's log1p statistics: the time-to-event head turns it back into days
            "age_scale": [float(enc.numeric.mean[-1]), float(enc.numeric.std[-1])],
        }

    @property
    def train_positive_rate(self) -> float:
        """Churn rate of the training rows: the loss's class weight and the prior for no-history scoring."""
        return float(self.data.train.snaps.label.mean())

    def customer_ids(self, stage: str, rows: np.ndarray) -> np.ndarray:
        """The customer ids of a split's rows (a batch's `index`), for messages that name customers."""
        split = getattr(self.data, stage)
        return self.data.log.customer_ids[split.snaps.customer[np.asarray(rows)]]

    def state_dict(self) -> dict[str, Any]:
        """The fitted encoders travel inside every checkpoint, so export needs nothing but the checkpoint."""
        if self.data is None:
            return {}
        return {
            "encoder": self.data.encoder.state(),
            "featurizer": self.data.featurizer.state(),
            "train_positive_rate": self.train_positive_rate,
        }

    def _dataset(self, split: Split) -> SequenceDataset | DeviceSequenceDataset:
        agg = self.data.featurizer.scale(split.aggregates) if self.cfg.get("use_aggregates") else None
        device, multiple = self._gather_device(split, agg), self._width_multiple()
        if device:
            return DeviceSequenceDataset(split.seqs, agg, device, multiple)
        return SequenceDataset(split.seqs, agg, multiple)

    def _width_multiple(self) -> int:
        """`data.pad_multiple`: each batch's padded width rounded up to a multiple of it, so a run sees few
        distinct shapes (auto: `auto_width_multiple` of the trainer's device)."""
        value = self.cfg.get("pad_multiple", DataConfig.pad_multiple)
        if str(value).lower() == "auto":
            return auto_width_multiple(self._trainer_device())
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"data.pad_multiple must be auto or a whole number >= 1, got {value!r}")
        return value

    def _trainer_device(self) -> torch.device:
        trainer = self.trainer
        if trainer is not None:
            return trainer.strategy.root_device
        return self.device if self.device is not None else torch.device("cpu")

    def _gather_device(self, split: Split, agg: np.ndarray | None) -> torch.device | None:
        """Where batches are gathered: `data.device_gather` true → the trainer's device; auto → a CUDA
        device when the split takes under `device_gather_fraction` of its free memory; else None (host)."""
        mode = str(self.cfg.get("device_gather", DataConfig.device_gather)).lower()
        device = self._trainer_device()
        if mode in ("false", "off", "none"):
            return None
        if mode in ("true", "on"):
            return device
        if device.type != "cuda":
            return None
        free, _ = torch.cuda.mem_get_info(device)
        share = float(self.cfg.get("device_gather_fraction", DataConfig.device_gather_fraction))
        fits = device_bytes(split.seqs, agg) < share * free
        return device if fits else None

    def _sampler(self, split: Split, train: bool, num_replicas: int, rank: int) -> LengthBucketBatchSampler:
        cfg = self.cfg
        return LengthBucketBatchSampler(
            split.seqs.lengths,
            int(
                cfg.get("batch_size", DataConfig.batch_size)
                if train
                else cfg.get("eval_batch_size", DataConfig.eval_batch_size)
            ),
            shuffle=train,
            bucket=bool(cfg.get("bucket_by_length", DataConfig.bucket_by_length)),
            seed=int(cfg.get("seed") or 0),
            num_replicas=num_replicas,
            rank=rank,
        )

    def train_batches(self, world_size: int = 1) -> int:
        """Training batches per epoch on each of `world_size` ranks."""
        return len(self._sampler(self.data.train, True, world_size, 0))

    def _loader(self, split: Split, train: bool) -> DataLoader:
        cfg = self.cfg
        seed = int(cfg.get("seed") or 0)
        trainer = self.trainer
        sampler = self._sampler(
            split, train, trainer.world_size if trainer else 1, trainer.global_rank if trainer else 0
        )
        dataset = self._dataset(split)
        on_device = isinstance(dataset, DeviceSequenceDataset)  # nothing to load in workers or pin
        workers = 0 if on_device else int(cfg.get("num_workers", DataConfig.num_workers))
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=workers,
            pin_memory=bool(cfg.get("pin_memory", DataConfig.pin_memory)) and not on_device,
            persistent_workers=workers > 0,
            # worker base seeds from the loader's own generator: starting an epoch's iterator leaves the
            # global RNG (dropout) alone, so a run resumed from a checkpoint draws what the first run drew
            generator=torch.Generator().manual_seed(seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data.train, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data.val, train=False)

    def test_dataloader(self) -> DataLoader:
        if self.data.test is None:
            raise ConfigError("no test split: set data.test_cutoff")
        return self._loader(self.data.test, train=False)
