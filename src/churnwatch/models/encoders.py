"""Network pieces: per-event encoder, sequence encoders (LSTM, GRU, transformer), pooling, and the model
(its time-to-event head is models/hazard.py).

Everything here is TorchScript-scriptable, so the exported file needs no churnwatch code. Inputs are the
tensors of an EventBatch: right-padded events plus lengths (every row has at least one real event).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from churnwatch.config.schema import NetConfig
from churnwatch.errors import ConfigError
from churnwatch.models.hazard import HazardHead


def embedding_dim(cardinality: int, cap: int = 32) -> int:
    """A common rule of thumb: grow with the vocabulary, but slowly, and never past `cap`."""
    return int(min(cap, max(4, round(1.6 * cardinality**0.56))))


class Dropout(nn.Module):
    """`nn.Dropout`, with CPU masks drawn two per 32-bit random number.

    On CPU, torch's dropout draws one Bernoulli number per element, and that was 34% of a transformer
    training step (41% in bf16) and 10% of an LSTM step (docs/BENCHMARKS.md, "Cheaper dropout masks").
    Here each element takes 15 bits of torch's own generator (so a seed reproduces the run): dropped with
    probability round(p * 2^15) / 2^15, within 2e-5 of p, kept ones scaled by 1 / (1 - that). On a GPU,
    torch's dropout (Philox) is already cheap and is used as it is. Parameter-free, as `nn.Dropout`, so
    checkpoints are unchanged."""

    def __init__(self, p: float = 0.1):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {p}")
        self.p = float(p)
        self.threshold = int(round(self.p * 32768))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, True)
        n = x.numel()
        half = (n + 1) // 2
        words = torch.empty((half,), dtype=torch.int32, device=x.device).random_()  # [0, 2^31)
        keep = torch.empty((2 * half,), dtype=torch.bool, device=x.device)
        torch.ge(torch.bitwise_and(words, 32767), self.threshold, out=keep[:half])  # two 15-bit numbers
        torch.ge(words >> 16, self.threshold, out=keep[half:])  # per word
        scale = torch.full((), 32768.0 / (32768 - self.threshold), dtype=x.dtype, device=x.device)
        return x * torch.where(keep[:n].view(x.shape), scale, torch.zeros_like(scale))

    def extra_repr(self) -> str:
        return f"p={self.p}"


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
        self.dropout = Dropout(dropout)
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

    def forward(self, time: Tensor, lengths: Tensor, causal: bool = False) -> Tensor:
        angles = time.unsqueeze(-1) * self.freqs  # (B, L, n_time, n_freq)
        feats = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(2)
        steps = torch.arange(time.shape[1], device=time.device)
        if causal:  # the rank from the end would tell a step how many follow it
            rank = steps.unsqueeze(0).expand(time.shape[0], -1).clamp(0, self.max_len - 1)
        else:
            rank = (lengths.unsqueeze(1) - 1 - steps.unsqueeze(0)).clamp(0, self.max_len - 1)
        return self.proj(feats) + self.rank(rank)


class SelfAttention(nn.Module):
    """Multi-head self-attention with `nn.MultiheadAttention`'s parameters (names, shapes and initial values),
    batch first. Training on CPU computes it step by step so that its dropout is ours (torch's Bernoulli
    draws on the (batch, heads, L, L) weights were 9% of a transformer training step); elsewhere, and on a
    GPU, it is `scaled_dot_product_attention`, fused where the backend can."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ConfigError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.n_heads = n_heads
        self.p = float(dropout)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = Dropout(dropout)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, blocked: Tensor) -> Tensor:
        """x (B, L, d); blocked (B or 1, 1, L or 1, L) bool: True where a query may not see a key."""
        b, n, d = x.shape
        qkv = nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.training and self.p > 0.0 and x.device.type == "cpu":
            scores = (q * (1.0 / math.sqrt(d // self.n_heads))) @ k.transpose(-2, -1)
            weights = torch.softmax(scores.masked_fill(blocked, float("-inf")), dim=-1)
            out = self.dropout(weights) @ v
        else:
            p = self.p if self.training else 0.0
            out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=~blocked, dropout_p=p)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class EncoderLayer(nn.Module):
    """`nn.TransformerEncoderLayer(norm_first=True, activation="gelu", batch_first=True)`, parameter for
    parameter (checkpoints load either way), with our attention and dropouts."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.self_attn = SelfAttention(d_model, n_heads, dropout)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)

    def forward(self, x: Tensor, blocked: Tensor) -> Tensor:
        x = x + self.dropout1(self.self_attn(self.norm1(x), blocked))
        ff = self.linear2(self.dropout(nn.functional.gelu(self.linear1(self.norm2(x)))))
        return x + self.dropout2(ff)


class EncoderStack(nn.Module):
    """Layers applied in turn (named `layers`, as in `nn.TransformerEncoder`)."""

    def __init__(self, layer: EncoderLayer, num_layers: int):
        super().__init__()
        # copies of one layer, as nn.TransformerEncoder makes them: the same initial weights in each
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])

    def forward(self, x: Tensor, blocked: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, blocked)
        return x


class TransformerEncoder(nn.Module):
    """Pre-norm transformer encoder with a padding mask and a time-aware position encoding; `causal`: each
    step attends to itself and earlier steps only (what a per-step time-to-event head needs)."""

    def __init__(
        self,
        d_model: int,
        n_time: int,
        *,
        num_layers: int = 2,
        n_heads: int = 4,
        ff_mult: int = 4,
        dropout: float = 0.1,
        max_len: int = 4096,
        causal: bool = False,
    ):
        super().__init__()
        self.causal = causal
        self.time = TimeEncoding(n_time, d_model, max_len=max_len)
        self.encoder = EncoderStack(EncoderLayer(d_model, n_heads, ff_mult * d_model, dropout), num_layers)
        self.norm = nn.LayerNorm(d_model)
        self.out_dim = d_model

    def forward(self, x: Tensor, mask: Tensor, time: Tensor) -> Tensor:
        lengths = mask.sum(dim=1)
        x = x + self.time(time, lengths, self.causal)
        blocked = ~mask[:, None, None, :]  # (B, 1, 1, L): padding is never attended to
        if self.causal:
            n = x.shape[1]
            future = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
            blocked = blocked | future[None, None]
        return self.norm(self.encoder(x, blocked))


class Pooling(nn.Module):
    """Sequence → one vector: the last *real* step, the masked mean, or masked attention."""

    def __init__(self, kind: str, dim: int):
        super().__init__()
        if kind not in ("last", "mean", "attention"):
            raise ConfigError(f"pooling must be last, mean or attention, got {kind!r}")
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
    """Event encoder → sequence encoder → pooling, fused with static (and aggregate) features → logit.

    With `tte_bins` a hazard head reads every step too (dense time-to-event supervision). Then each step
    must see only its past: the steps' age (days to the cutoff) is hidden from the sequence, since it would
    bound the time to the next step, and the last step's age (the recency) goes to the churn head instead;
    the transformer attends causally. `tte_only`: the churn logit is P(no activity within
    `horizon_days` after the cutoff) from the last step's hazard, with no separate churn head.
    """

    def __init__(
        self,
        cat_cardinalities: list[int],
        n_num: int,
        time_index: list[int],
        static_cat_cardinalities: list[int],
        n_static_num: int,
        *,
        n_aggregates: int = 0,
        encoder: str = NetConfig.encoder,
        d_model: int = NetConfig.d_model,
        hidden: int = NetConfig.hidden,
        num_layers: int = NetConfig.num_layers,
        n_heads: int = NetConfig.n_heads,
        dropout: float = NetConfig.dropout,
        pooling: str = NetConfig.pooling,
        head_hidden: int = NetConfig.head_hidden,
        max_len: int = 4096,
        tte_bins: list[float] | None = None,
        tte_only: bool = False,
        horizon_days: float = 0.0,
        age_scale: tuple[float, float] = (0.0, 1.0),
    ):
        super().__init__()
        self.has_hazard = tte_bins is not None
        if tte_only and not self.has_hazard:
            raise ConfigError("tte_only needs tte_bins")
        if tte_only and not horizon_days > 0:
            raise ConfigError(f"tte_only needs a positive horizon_days, got {horizon_days}")
        if tte_only and n_aggregates:
            raise ConfigError(
                "model.tte.only reads the event sequence alone: with aggregate features (the hybrid) use "
                "model.tte.weight > 0 instead"
            )
        self.tte_only = tte_only
        self.events = EventEncoder(cat_cardinalities, n_num, d_model, dropout)
        if encoder in ("lstm", "gru"):
            self.sequence = RNNEncoder(encoder, d_model, hidden, num_layers, dropout)
        elif encoder == "transformer":
            self.sequence = TransformerEncoder(
                d_model,
                len(time_index),
                num_layers=num_layers,
                n_heads=n_heads,
                dropout=dropout,
                max_len=max_len,
                causal=self.has_hazard,
            )
        else:
            raise ConfigError(f"encoder must be lstm, gru or transformer, got {encoder!r}")
        self.pool = Pooling(pooling, self.sequence.out_dim)
        self.static_embeddings = nn.ModuleList(
            [nn.Embedding(c, embedding_dim(c, 16)) for c in static_cat_cardinalities]
        )
        static_dim = sum(embedding_dim(c, 16) for c in static_cat_cardinalities) + n_static_num + n_aggregates
        recency_dim = 1 if self.has_hazard else 0
        # hazard only: no churn head (DDP rejects parameters that never receive a gradient)
        self.head = (
            nn.Identity()
            if tte_only
            else nn.Sequential(
                nn.Linear(self.sequence.out_dim + static_dim + recency_dim, head_hidden),
                nn.ReLU(),
                Dropout(dropout),
                nn.Linear(head_hidden, 1),
            )
        )
        # None compiles away: TorchScript drops the branches under `self.hazard is not None`
        self.hazard = HazardHead(self.sequence.out_dim, list(tte_bins)) if tte_bins is not None else None
        self.register_buffer("time_index", torch.tensor(time_index, dtype=torch.long))
        # the age feature is the last time input (features/encode.py TIME_NUMERIC: gap, then age)
        self.age_index = int(time_index[-1]) if time_index else 0
        keep = torch.ones(n_num)
        if self.has_hazard and n_num:
            keep[self.age_index] = 0.0
        self.register_buffer("keep_num", keep)
        # standardised log1p age → days: days = expm1(z * std + mean)
        self.register_buffer("age_scale", torch.tensor([float(age_scale[0]), float(age_scale[1])]))
        self.register_buffer("horizon", torch.tensor([float(horizon_days)]))

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

    def _steps(self, embedded: list[Tensor], num: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-step states (B, L, dim), the padding mask, and the last step's standardised age."""
        steps = torch.arange(num.shape[1], device=num.device)
        mask = steps.unsqueeze(0) < lengths.unsqueeze(1)
        last = num[torch.arange(num.shape[0], device=num.device), lengths - 1]
        recency = last[:, self.age_index] if self.has_hazard else last[:, :0].sum(-1)
        if self.has_hazard:
            num = num * self.keep_num
        x = self.events.from_embedded(embedded, num)
        time = num.index_select(2, self.time_index)
        return self.sequence(x, mask, time), mask, recency

    def _recency_days(self, recency: Tensor) -> Tensor:
        return torch.expm1(recency.float() * self.age_scale[1] + self.age_scale[0]).clamp(min=0.0)

    def _logit(
        self,
        h: Tensor,
        mask: Tensor,
        lengths: Tensor,
        recency: Tensor,
        static_embedded: list[Tensor],
        static_num: Tensor,
        aggregates: Tensor,
    ) -> Tensor:
        hazard = self.hazard
        if hazard is not None and self.tte_only:
            last = h[torch.arange(h.shape[0], device=h.device), lengths - 1]
            p = hazard.survival(hazard(last), self._recency_days(recency), self.horizon)[:, 0]
            p = p.clamp(1e-6, 1.0 - 1e-6)
            return (torch.log(p) - torch.log1p(-p)).to(h.dtype)
        parts = [self.pool(h, mask)]
        parts.extend(static_embedded)
        parts.append(static_num)
        parts.append(aggregates)
        if self.has_hazard:
            parts.append(recency.unsqueeze(1).to(h.dtype))
        return self.head(torch.cat(parts, dim=1)).squeeze(-1)

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
        h, mask, recency = self._steps(embedded, num, lengths)
        return self._logit(h, mask, lengths, recency, static_embedded, static_num, aggregates)

    @torch.jit.export
    def logit_and_hazard(
        self,
        cat: Tensor,
        num: Tensor,
        lengths: Tensor,
        static_cat: Tensor,
        static_num: Tensor,
        aggregates: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """The churn logit and every step's hazard rates (B, L, bins), from one pass (training)."""
        embedded, static_embedded = self.embed(cat, static_cat)
        h, mask, recency = self._steps(embedded, num, lengths)
        logit = self._logit(h, mask, lengths, recency, static_embedded, static_num, aggregates)
        hazard = self.hazard
        if hazard is None:
            return logit, h[:, :, :0]
        return logit, hazard(h)

    @torch.jit.export
    def survival(
        self,
        cat: Tensor,
        num: Tensor,
        lengths: Tensor,
        static_cat: Tensor,
        static_num: Tensor,
        aggregates: Tensor,
        horizons: Tensor,
    ) -> Tensor:
        """P(no activity within each of `horizons` days after the cutoff) from the hazard head: (B, H)."""
        hazard = self.hazard
        if hazard is None:
            raise RuntimeError("this network has no time-to-event head (model.tte)")
        last, since = self._last_state(cat, num, lengths, static_cat)
        return hazard.survival(hazard(last), since, horizons.float())

    @torch.jit.export
    def demand(
        self,
        cat: Tensor,
        num: Tensor,
        lengths: Tensor,
        static_cat: Tensor,
        static_num: Tensor,
        aggregates: Tensor,
        days: int,
    ) -> Tensor:
        """The demand forecast from the hazard head, (B, 2): expected activities (purchases, visits) within
        `days` days after the cutoff (HazardHead.expected_count) and the probability of at least one."""
        hazard = self.hazard
        if hazard is None:
            raise RuntimeError("this network has no time-to-event head (model.tte)")
        last, since = self._last_state(cat, num, lengths, static_cat)
        rates = hazard(last)
        quiet = hazard.survival(rates, since, torch.full((1,), float(days), device=rates.device))[:, 0]
        return torch.stack([hazard.expected_count(rates, since, days), 1.0 - quiet], dim=1)

    def _last_state(
        self, cat: Tensor, num: Tensor, lengths: Tensor, static_cat: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The last step's state, which its hazard reads, and the days since that step (the quiet time up
        to the cutoff)."""
        embedded, _ = self.embed(cat, static_cat)
        h, _, recency = self._steps(embedded, num, lengths)
        return h[torch.arange(h.shape[0], device=h.device), lengths - 1], self._recency_days(recency)

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
