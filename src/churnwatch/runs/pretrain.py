"""Self-supervised pretraining (`pretrain=coles`): the sequence layers of the network about to be trained
learn from every history before the test cutoff, labelled or not, then fine-tuning starts from them.

Inputs only: the pretraining population is everyone with an event before the test cutoff (or, without a
test cutoff, before the last training cutoff's label window ends), their histories cut there by the same
snapshot code as training, encoded by the encoder fitted on the training split. No label and no event at or
after that cutoff is read (tests/runs/test_pretraining.py proves it). The pretrained state is a file keyed by
everything that shapes it, under <cache_dir>/pretrain/, so runs with other seeds, heads or losses reuse it;
`pretrain.checkpoint` names a file to start from instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from churnwatch.data.snapshots import build_snapshot
from churnwatch.errors import ConfigError
from churnwatch.features.encode import EncodedSequences
from churnwatch.io.atomic import atomic_path
from churnwatch.models.coles import ColesModule, SliceViews, load_pretrained, pretrained_state
from churnwatch.models.encoders import ChurnNet
from churnwatch.pipeline.batch import LengthBucketBatchSampler
from churnwatch.pipeline.cache_key import LOADER_KEYS, NOT_ENCODING_KEYS, resolved, size_and_mtime
from churnwatch.pipeline.dataset import ChurnData
from churnwatch.runtime.hardware import accelerator_device

log = logging.getLogger(__name__)
SEED_KEYS = frozenset({"seed", "fold", "folds", "val_fraction", "train_fraction", "sample_weight"})
"""Data keys that change which training rows a run fits on, not the pretraining input (the encoder state,
part of the key, catches any vocabulary they change)."""


def pretraining_cutoff(data: ChurnData) -> pd.Timestamp:
    """Where the pretraining histories end: the test cutoff, else the end of the last training label
    window (the latest time a training run may see)."""
    plan = data.plan
    if plan.test_cutoff is not None:
        return plan.test_cutoff
    return max(plan.train_cutoffs) + pd.Timedelta(days=plan.horizon_days)


def pretraining_sequences(data: ChurnData) -> EncodedSequences:
    """Every customer's steps before `pretraining_cutoff`, encoded as training encodes them, unlabelled."""
    snaps = build_snapshot(data.log, pretraining_cutoff(data), horizon_days=None)
    return data.encoder.transform(data.log, snaps, data.customers)


def pretrain_key(cfg: DictConfig, data: ChurnData, net_cfg: dict[str, Any]) -> str:
    """A digest of what the pretrained state depends on: the data (config and input files' identity), the
    network's settings and the pretraining settings."""
    data_cfg = {
        k: v
        for k, v in OmegaConf.to_container(cfg.data, resolve=True).items()
        if k not in LOADER_KEYS | NOT_ENCODING_KEYS | SEED_KEYS
    }
    events = resolved(cfg.data.events_path)
    try:
        stamp = [events, *size_and_mtime(events)]
    except OSError:  # not there yet
        stamp = None
    parts = {
        "data": data_cfg,
        "events": stamp,
        # not the fitted encoder: another seed's training customers refit it (its vocabularies are remapped
        # on load, its numeric statistics move inputs only slightly), and runs with any seed reuse the file
        "net": net_cfg,
        "pretrain": {
            k: v
            for k, v in OmegaConf.to_container(cfg.pretrain, resolve=True).items()
            if k not in ("checkpoint", "freeze")
        },
    }
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def pretrain_encoder(cfg: DictConfig, data: ChurnData, net: ChurnNet) -> Path:
    """Start `net` from its pretrained sequence layers: from `pretrain.checkpoint`, else from the keyed
    file, pretraining first when it does not exist yet. Returns the file used."""
    p = cfg.pretrain
    net_cfg = {"features": dict(net_spec(net)), "net": OmegaConf.to_container(cfg.model.net, resolve=True)}
    if p.get("checkpoint"):
        path = Path(p.checkpoint)
        if not path.exists():
            raise FileNotFoundError(f"pretrain.checkpoint={path}: file not found")
    else:
        path = Path(cfg.paths.cache_dir) / "pretrain" / f"{p.objective}-{pretrain_key(cfg, data, net_cfg)}.pt"
    if path.exists():
        log.info("pretrained encoder: %s (reused)", path)
    else:
        _pretrain(cfg, data, net, path)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    vocabs = [(saved["vocabs"][n], data.encoder.vocabs[n].tokens) for n in data.encoder.schema.categorical]
    load_pretrained(net, saved["state"], bool(p.get("freeze", False)), vocabs)
    return path


def net_spec(net: ChurnNet) -> dict[str, Any]:
    """The shapes that make two networks' sequence layers interchangeable (an embedding's width, not its
    row count: rows are remapped by token)."""
    return {
        k: list(v.shape[1:] if k.startswith("events.embeddings.") else v.shape)
        for k, v in pretrained_state(net).items()
    }


def _pretrain(cfg: DictConfig, data: ChurnData, net: ChurnNet, path: Path) -> None:
    p = cfg.pretrain
    if p.objective != "coles":
        raise ConfigError(f"pretrain.objective must be coles or none, got {p.objective!r}")
    seqs = pretraining_sequences(data)
    log.info(
        "pretraining (%s) on %d customers' histories before %s",
        p.objective,
        len(seqs),
        pretraining_cutoff(data).date(),
    )
    torch.manual_seed(int(p.seed))
    module = ColesModule(net, int(p.dim), float(p.temperature), float(p.lr), float(p.weight_decay))
    views = SliceViews(seqs, int(p.views), float(p.min_share), float(p.max_share), int(p.seed))
    sampler = LengthBucketBatchSampler(seqs.lengths, int(p.batch_size), shuffle=True, seed=int(p.seed))
    loader = DataLoader(views, sampler=sampler, batch_size=None)
    device = accelerator_device(str(cfg.trainer.get("accelerator", "cpu")))
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=int(p.max_epochs),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=bool(cfg.trainer.get("enable_progress_bar", True)),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, len(sampler))),
    )
    trainer.fit(module, train_dataloaders=loader)
    path.parent.mkdir(parents=True, exist_ok=True)
    vocabs = {n: list(v.tokens) for n, v in data.encoder.vocabs.items()}
    with atomic_path(path) as tmp:
        torch.save({"state": pretrained_state(net), "vocabs": vocabs}, tmp)
    log.info(
        "pretrained encoder saved: %s (final loss %.4f)",
        path,
        float(trainer.callback_metrics.get("pretrain/loss", np.nan)),
    )
