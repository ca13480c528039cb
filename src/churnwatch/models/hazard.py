"""The time-to-event head: a piecewise-exponential hazard of a customer's next activity, per step.

TorchScript-scriptable like the rest of the network (models/encoders.py ChurnNet carries it), so the
exported file's `survival` and `demand` need no churnwatch code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from churnwatch.errors import ConfigError


class HazardHead(nn.Module):
    """Per step, a piecewise-constant hazard of the next activity over day bins [edges[k], edges[k+1])
    (the last bin open-ended): a piecewise-exponential time-to-event model, continuous in time, so the
    probability of no activity over any span follows from the cumulative hazard."""

    def __init__(self, dim: int, edges: list[float]):
        super().__init__()
        if len(edges) < 2 or edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ConfigError(f"tte.bins must start at 0 and increase, got {edges}")
        self.proj = nn.Linear(dim, len(edges))
        nn.init.zeros_(self.proj.weight)
        nn.init.constant_(self.proj.bias, math.log(math.expm1(1.0 / 30)))  # about one activity a month
        self.register_buffer("edges", torch.tensor(edges, dtype=torch.float32))
        widths = [b - a for a, b in zip(edges, edges[1:], strict=False)] + [1e9]
        self.register_buffer("widths", torch.tensor(widths, dtype=torch.float32))

    def forward(self, h: Tensor) -> Tensor:
        """Rates per day (..., n_bins)."""
        return F.softplus(self.proj(h).float()) + 1e-6

    def cumulative(self, rates: Tensor, t: Tensor) -> Tensor:
        """Cumulative hazard up to `t` days (rates (..., K), t (...))."""
        exposure = (t.unsqueeze(-1) - self.edges).clamp(min=0.0)
        return (rates * torch.minimum(exposure, self.widths)).sum(-1)

    def bin_rate(self, rates: Tensor, t: Tensor) -> Tensor:
        """The rate in force at `t` days."""
        k = torch.bucketize(t.contiguous(), self.edges, right=True) - 1
        return rates.gather(-1, k.clamp(min=0).unsqueeze(-1)).squeeze(-1)

    def nll(self, rates: Tensor, t: Tensor, observed: Tensor, mask: Tensor) -> Tensor:
        """Mean negative log-likelihood over real steps: log λ(t) - Λ(t) if observed, -Λ(t) if censored."""
        ll = observed * torch.log(self.bin_rate(rates, t)) - self.cumulative(rates, t)
        weights = mask.to(ll.dtype)
        return -(ll * weights).sum() / weights.sum().clamp_min(1.0)

    def survival(self, rates: Tensor, since: Tensor, horizons: Tensor) -> Tensor:
        """P(no activity within each horizon (H,) after `since` days without one): (B, H)."""
        start = self.cumulative(rates, since)
        later = self.cumulative(rates.unsqueeze(1), since.unsqueeze(1) + horizons.unsqueeze(0))
        return torch.exp(start.unsqueeze(1) - later)

    def expected_count(self, rates: Tensor, since: Tensor, days: int) -> Tensor:
        """Expected activities within `days` days after `since` days without one: a renewal process whose
        first wait is the hazard conditioned on the quiet `since` days, and whose later waits follow the
        same hazard from zero (the customer keeps their current rhythm). On a daily grid: the renewal
        density u = g + u * f (g, f: the first and later waits' daily probabilities), summed. (B,)"""
        grid = torch.arange(days + 1, device=rates.device, dtype=torch.float32)
        first = self.survival(rates, since, grid)  # (B, days + 1): P(no activity by day k)
        later = self.survival(rates, torch.zeros_like(since), grid)
        g = first[:, :-1] - first[:, 1:]  # P(first activity in day k), k < days
        f = later[:, :-1] - later[:, 1:]
        u = torch.zeros_like(g)
        scale = 1.0 / (1.0 - f[:, 0]).clamp(min=1e-6)  # a repeat on the same day
        for k in range(days):
            acc = g[:, k]
            if k > 0:
                acc = acc + (u[:, :k] * f[:, 1 : k + 1].flip(1)).sum(1)
            u[:, k] = acc * scale
        return u.sum(1)
