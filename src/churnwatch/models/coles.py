"""CoLES: contrastive learning of event sequences (Babaev et al. 2022, "CoLES: Contrastive Learning for
Event Sequences with Self-Supervision", SIGMOD; pytorch-lifestream's winner on churn-like tasks).

Self-supervision from the inputs alone: random slices of one customer's history are views of the same
customer, slices of others are not. The event and sequence encoders learn to map a customer's slices close
together (multi-positive InfoNCE on normalised embeddings), which needs no label, so it can read every
history before the test cutoff. The objective lives here, apart from the layers (models/encoders.py): it
trains a `ChurnNet`'s event encoder, sequence encoder and pooling, which fine-tuning then starts from.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from churnwatch.errors import ConfigError
from churnwatch.features.encode import EncodedSequences
from churnwatch.models.encoders import ChurnNet
from churnwatch.pipeline.batch import EventBatch, pad_steps

PRETRAINED_PARTS = ("events.", "sequence.", "pool.")
"""What pretraining trains and fine-tuning takes over: the layers that read the sequence."""


class SliceViews(Dataset):
    """Indexed by a list of rows, returns an EventBatch of `views` random slices of each row's steps: each
    slice keeps a share in [min_share, max_share] of the steps (at least one) from a random start. The
    batch's `index` is the row each slice came from (which slices are positives of each other)."""

    def __init__(
        self, seqs: EncodedSequences, views: int, min_share: float, max_share: float, seed: int = 0
    ):
        if views < 2:
            raise ConfigError(f"pretrain.views must be at least 2, got {views}")
        if not 0 < min_share <= max_share <= 1:
            raise ConfigError(f"pretrain needs 0 < min_share <= max_share <= 1, got {min_share}, {max_share}")
        self.seqs, self.views = seqs, views
        self.min_share, self.max_share = min_share, max_share
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, rows: Sequence[int] | np.ndarray) -> EventBatch:
        owner = np.repeat(np.asarray(rows, dtype=np.int64), self.views)
        n = self.seqs.lengths[owner]
        share = self.rng.uniform(self.min_share, self.max_share, len(owner))
        size = np.clip(np.round(share * n).astype(np.int64), 1, n)
        start = self.seqs.offsets[owner] + (self.rng.random(len(owner)) * (n - size + 1)).astype(np.int64)
        return pad_steps(self.seqs, owner, start, start + size)


def contrastive_loss(z: Tensor, owner: Tensor, temperature: float) -> Tensor:
    """Multi-positive InfoNCE: each view's other views of the same row are its positives, every other
    view in the batch a negative. `z`: L2-normalised embeddings (N, d); `owner`: row of each view (N,)."""
    sim = (z @ z.T).float() / temperature
    self_pair = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_pair, -1e9)
    positive = (owner.unsqueeze(0) == owner.unsqueeze(1)) & ~self_pair
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    per_view = -(log_prob * positive).sum(1) / positive.sum(1).clamp(min=1)
    return per_view.mean()


class ColesModule(L.LightningModule):
    """Trains `net`'s sequence-reading layers with the CoLES objective through a projection head (which
    fine-tuning drops, as in SimCLR)."""

    def __init__(
        self,
        net: ChurnNet,
        dim: int = 64,
        temperature: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
    ):
        super().__init__()
        self.net = net
        width = net.sequence.out_dim
        self.project = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, dim))
        self.temperature, self.lr, self.weight_decay = temperature, lr, weight_decay

    def embed(self, batch: EventBatch) -> Tensor:
        """The pooled sequence vector fine-tuning's head reads (before the projection)."""
        embedded, _ = self.net.embed(batch.cat, batch.static_cat)
        h, mask, _ = self.net._steps(embedded, batch.num, batch.lengths)
        return self.net.pool(h, mask)

    def training_step(self, batch: EventBatch, batch_idx: int) -> Tensor:
        z = F.normalize(self.project(self.embed(batch)).float(), dim=-1)
        loss = contrastive_loss(z, batch.index, self.temperature)
        self.log("pretrain/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def pretrained_state(net: ChurnNet) -> dict[str, Tensor]:
    """The parts of `net` pretraining trained, by name."""
    return {k: v.detach().cpu() for k, v in net.state_dict().items() if k.startswith(PRETRAINED_PARTS)}


def load_pretrained(
    net: ChurnNet,
    state: dict[str, Tensor],
    freeze: bool = False,
    vocabs: Sequence[tuple[list[str], list[str]]] = (),
) -> None:
    """Start `net` from a pretrained state; `freeze` keeps those layers fixed, so only the heads train.

    `vocabs`: per event field with a fitted vocabulary (in field order), the (pretrained, own) tokens. A
    vocabulary refitted on another seed's training customers may hold other tokens in other rows: each own
    token takes its pretrained row, and tokens pretraining never saw keep their fresh initialisation.
    Every other shape must match (the same data and net settings)."""
    own = pretrained_state(net)
    state = dict(state)
    for i, (theirs, mine) in enumerate(vocabs):
        key = f"events.embeddings.{i}.weight"
        row = {t: j for j, t in enumerate(theirs)}
        remapped = own[key].clone()
        known = [(j, row[t]) for j, t in enumerate(mine) if t in row]
        if known and key in state and state[key].shape[1:] == remapped.shape[1:]:
            to, frm = (torch.tensor(x) for x in zip(*known, strict=True))
            remapped[to] = state[key][frm]
            state[key] = remapped
    if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
        raise ConfigError(
            "the pretrained encoder does not fit this network (other net settings or features); pretrain "
            "again for these settings (pretrain.checkpoint=null)"
        )
    net.load_state_dict(state, strict=False)
    if freeze:
        for name, param in net.named_parameters():
            if name.startswith(PRETRAINED_PARTS):
                param.requires_grad_(False)
