"""Network pieces: per-event encoder, sequence encoders (LSTM, GRU, transformer), pooling, and the model.

Everything here is TorchScript-scriptable, so the exported file needs no churnwatch code. Inputs are the
tensors of an EventBatch: right-padded events plus lengths (every row has at least one real event).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def embedding_dim(cardinality: int, cap: int = 32) -> int:
    """A common rule of thumb: grow with the vocabulary, but slowly, and never past `cap`."""
    return int(min(cap, max(4, round(1.6 * cardinality**0.56))))


class EventEncoder(nn.Module):
    """One vector per event: embeddings of its categorical fields plus a projection of its numbers."""

    def __init__(
        self, cat_cardinalities: list[int], n_num: int, d_model: int, dropout: float = 0.1, emb_cap: int = 32
    ):
        super().__init__()
        dims = [embedding_dim(c, emb_cap) for c in cat_cardinalities]
        self.embeddings = nn.ModuleList(
            [nn.Embedding(c, d, padding_idx=0) for c, d in zip(cat_cardinalities, dims, strict=True)]
        )
        num_dim = max(4, min(32, 4 * n_num)) if n_num else 0
        self.numeric = nn.Linear(n_num, num_dim) if n_num else nn.Identity()
        self.proj = nn.Linear(sum(dims) + num_dim, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.has_num = n_num > 0

    def embed(self, cat: Tensor) -> list[Tensor]:
        """One embedding tensor (B, L, dim) per categorical field: what attribution perturbs."""
        out: list[Tensor] = []
        for i, emb in enumerate(self.embeddings):
            out.append(emb(cat[:, :, i]))
        return out

    def from_embedded(self, embedded: list[Tensor], num: Tensor) -> Tensor:
        parts = list(embedded)
        if self.has_num:
            parts.append(self.numeric(num))
        return self.dropout(self.norm(torch.relu(self.proj(torch.cat(parts, dim=-1)))))

    def forward(self, cat: Tensor, num: Tensor) -> Tensor:
        return self.from_embedded(self.embed(cat), num)


class RNNEncoder(nn.Module):
    """LSTM or GRU over right-padded events.

    Unidirectional, so the output at a real step never depends on the padding after it: no packing is
    needed, and the last real step (lengths - 1) is exact.
    """

    def __init__(self, kind: str, d_model: int, hidden: int, num_layers: int = 1, dropout: float = 0.1):
        super().__init__()
        rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU}[kind]
        self.rnn = rnn_cls(
            d_model,
            hidden,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.out_dim = hidden

    def forward(self, x: Tensor, mask: Tensor, time: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return out


class TimeEncoding(nn.Module):
    """Time-aware position: sinusoids of each event's (standardised log) gap and age, plus its rank from
    the most recent event, so attention knows *when* things happened, not only in which order."""

    def __init__(self, n_time: int, d_model: int, n_freq: int = 16, max_len: int = 4096):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(math.log(0.25), math.log(32.0), n_freq)))
        self.proj = nn.Linear(2 * n_freq * n_time, d_model)
        self.rank = nn.Embedding(max_len, d_model)
        self.max_len = max_len

    def forward(self, time: Tensor, lengths: Tensor) -> Tensor:
        angles = time.unsqueeze(-1) * self.freqs  # (B, L, n_time, n_freq)
        feats = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(2)
        steps = torch.arange(time.shape[1], device=time.device)
        rank = (lengths.unsqueeze(1) - 1 - steps.unsqueeze(0)).clamp(0, self.max_len - 1)
        return self.proj(feats) + self.rank(rank)


class TransformerEncoder(nn.Module):
    """Pre-norm transformer encoder with a padding mask and a time-aware position encoding."""

    def __init__(
        self,
        d_model: int,
        n_time: int,
        num_layers: int = 2,
        n_heads: int = 4,
        ff_mult: int = 4,
        dropout: float = 0.1,
        max_len: int = 4096,
    ):
        super().__init__()
        self.time = TimeEncoding(n_time, d_model, max_len=max_len)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, ff_mult * d_model, dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.out_dim = d_model

    def forward(self, x: Tensor, mask: Tensor, time: Tensor) -> Tensor:
        lengths = mask.sum(dim=1)
        h = self.encoder(x + self.time(time, lengths), src_key_padding_mask=~mask)
        return self.norm(h)


class Pooling(nn.Module):
    """Sequence → one vector: the last *real* step, the masked mean, or masked attention."""

    def __init__(self, kind: str, dim: int):
        super().__init__()
        if kind not in ("last", "mean", "attention"):
            raise ValueError(f"pooling must be last, mean or attention, got {kind!r}")
        self.kind = kind
        # Only attention has parameters (DDP rejects parameters that never receive a gradient).
        self.score = nn.Linear(dim, 1) if kind == "attention" else nn.Identity()

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        if self.kind == "last":
            last = mask.sum(dim=1) - 1
            return h[torch.arange(h.shape[0], device=h.device), last]
        if self.kind == "mean":
            weights = mask.to(h.dtype)
            return (h * weights.unsqueeze(-1)).sum(dim=1) / weights.sum(dim=1, keepdim=True).clamp_min(1.0)
        scores = self.score(h).squeeze(-1).masked_fill(~mask, -1e4)
        return (torch.softmax(scores.float(), dim=1).to(h.dtype).unsqueeze(-1) * h).sum(dim=1)


class ChurnNet(nn.Module):
    """Event encoder → sequence encoder → pooling, fused with static (and aggregate) features → logit."""

    def __init__(
        self,
        cat_cardinalities: list[int],
        n_num: int,
        time_index: list[int],
        static_cat_cardinalities: list[int],
        n_static_num: int,
        n_aggregates: int = 0,
        encoder: str = "lstm",
        d_model: int = 64,
        hidden: int = 64,
        num_layers: int = 1,
        n_heads: int = 4,
        dropout: float = 0.1,
        pooling: str = "last",
        head_hidden: int = 64,
        max_len: int = 4096,
    ):
        super().__init__()
        self.events = EventEncoder(cat_cardinalities, n_num, d_model, dropout)
        if encoder in ("lstm", "gru"):
            self.sequence = RNNEncoder(encoder, d_model, hidden, num_layers, dropout)
        elif encoder == "transformer":
            self.sequence = TransformerEncoder(
                d_model, len(time_index), num_layers, n_heads, 4, dropout, max_len
            )
        else:
            raise ValueError(f"encoder must be lstm, gru or transformer, got {encoder!r}")
        self.pool = Pooling(pooling, self.sequence.out_dim)
        self.static_embeddings = nn.ModuleList(
            [nn.Embedding(c, embedding_dim(c, 16)) for c in static_cat_cardinalities]
        )
        static_dim = sum(embedding_dim(c, 16) for c in static_cat_cardinalities) + n_static_num + n_aggregates
        self.head = nn.Sequential(
            nn.Linear(self.sequence.out_dim + static_dim, head_hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(head_hidden, 1),
        )
        self.register_buffer("time_index", torch.tensor(time_index, dtype=torch.long))

    @torch.jit.export
    def embed(self, cat: Tensor, static_cat: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Per-field embeddings of the event and static categorical inputs (for attribution)."""
        static: list[Tensor] = []
        for i, emb in enumerate(self.static_embeddings):
            static.append(emb(static_cat[:, i]))
        return self.events.embed(cat), static

    @torch.jit.export
    def reference_embeddings(self) -> tuple[list[Tensor], list[Tensor]]:
        """Per field, the mean embedding of its known values (padding excluded): a neutral event or
        attribute, the reference attribution compares each real one against."""
        events: list[Tensor] = []
        for emb in self.events.embeddings:
            events.append(emb.weight[1:].mean(dim=0))
        static: list[Tensor] = []
        for emb in self.static_embeddings:
            static.append(emb.weight.mean(dim=0))
        return events, static

    @torch.jit.export
    def logit_from_embedded(
        self,
        embedded: list[Tensor],
        num: Tensor,
        lengths: Tensor,
        static_embedded: list[Tensor],
        static_num: Tensor,
        aggregates: Tensor,
    ) -> Tensor:
        """The logit from embedded inputs: forward() without the lookups, differentiable in every input."""
        steps = torch.arange(num.shape[1], device=num.device)
        mask = steps.unsqueeze(0) < lengths.unsqueeze(1)
        x = self.events.from_embedded(embedded, num)
        time = num.index_select(2, self.time_index)
        parts = [self.pool(self.sequence(x, mask, time), mask)]
        parts.extend(static_embedded)
        parts.append(static_num)
        parts.append(aggregates)
        return self.head(torch.cat(parts, dim=1)).squeeze(-1)

    def forward(
        self,
        cat: Tensor,
        num: Tensor,
        lengths: Tensor,
        static_cat: Tensor,
        static_num: Tensor,
        aggregates: Tensor,
    ) -> Tensor:
        embedded, static_embedded = self.embed(cat, static_cat)
        return self.logit_from_embedded(embedded, num, lengths, static_embedded, static_num, aggregates)
