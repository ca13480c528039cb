"""The offer ranker that travels inside model.pt: every recommender's fitted state as tensors, and one
TorchScript `forward` that ranks items for a batch of customers from their own purchase histories.

Every recommender here scores an item i for a customer u in one linear form,

    score(u, i) = own * n(u, i) + sum_j n(u, j) * S[j, i] + x_u . y_i + eps * pop(i)

with n(u, i) the customer's (confidence-weighted) purchases of i before the scoring date, S a sparse item-item
similarity (top-K neighbours per item), y_i the item factors and x_u the customer's factors, solved from
their history as in implicit ALS (Hu, Koren & Volinsky 2008, eq. 4): x_u = (YᵀY + λI + Yᵀ(C_u - I)Y)⁻¹
Yᵀ C_u p_u. Popularity (eps * pop) breaks ties, so a customer without history gets the most popular items.
Each recommender fills the parts it uses (popularity: none; buy-again: `own`; item-kNN: S; ALS: Y).
A small catalogue's S is stored dense, with `own` on its diagonal (`dense`): when it is no larger than the
neighbour lists (n ≤ 3K), summing the weighted rows of the items a customer bought (`embedding_bag`; one
matrix product with the whole of it for a batch of long histories) beats gathering and scattering every
neighbour (docs/BENCHMARKS.md).
Solving x_u at scoring time means no customer factors are stored: a new customer, or a customer with new
purchases since training, is scored from what they bought, and nothing about the future leaks in.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class OfferRanker(nn.Module):
    def __init__(
        self,
        popularity: Tensor,
        *,
        own: float = 0.0,
        neighbours: Tensor | None = None,
        similarity: Tensor | None = None,
        item_factors: Tensor | None = None,
        regularization: float = 0.0,
        alpha: float = 1.0,
        eps: float = 1e-6,
    ):
        super().__init__()
        n = int(popularity.shape[0])
        pop = popularity.double()
        pop = pop / pop.max().clamp_min(1e-12) if n else pop
        self.register_buffer("popularity", pop.float())
        self.own = float(own)
        self.eps = float(eps)
        self.alpha = float(alpha)
        neighbours = (neighbours if neighbours is not None else torch.zeros(n, 0)).long()
        similarity = (similarity if similarity is not None else torch.zeros(n, 0)).float()
        dense = torch.zeros(0, 0)
        if 0 < n <= 3 * neighbours.shape[1]:
            dense = torch.zeros(n, n).scatter_add_(1, neighbours, similarity) + self.own * torch.eye(n)
            neighbours, similarity = torch.zeros(n, 0, dtype=torch.long), torch.zeros(n, 0)
        self.register_buffer("neighbours", neighbours)
        self.register_buffer("similarity", similarity)
        self.register_buffer("dense", dense)
        factors = (item_factors if item_factors is not None else torch.zeros(n, 0)).float()
        self.register_buffer("item_factors", factors)
        f = factors.shape[1]
        gram = factors.double().T @ factors.double() + regularization * torch.eye(f, dtype=torch.float64)
        self.register_buffer("gram", gram.float())

    @torch.jit.export
    def n_items(self) -> int:
        return int(self.popularity.shape[0])

    def forward(self, items: Tensor, counts: Tensor, exclude: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-`k` items per customer: (B, k) item indices and their scores, best first.

        items (B, L) long: each customer's distinct purchased items (-1 pads); counts (B, L) float: how often
        they bought each; exclude (B, L) bool: items that must not be offered (e.g. bought in the last days).
        """
        n = self.n_items()
        b = items.shape[0]
        real = items >= 0
        idx = items.clamp(min=0)
        weight = torch.where(real, counts, torch.zeros_like(counts))
        score = self.eps * self.popularity.unsqueeze(0).expand(b, n).clone()
        if self.dense.shape[0] > 0 and 4 * idx.shape[1] < n:  # S + own * I, a few rows of it per customer
            score = score + nn.functional.embedding_bag(
                idx, self.dense, per_sample_weights=weight, mode="sum"
            )
        elif self.dense.shape[0] > 0:  # long histories: one product with the whole matrix
            bought = torch.zeros_like(score).scatter_add_(1, idx, weight)
            score = torch.addmm(score, bought, self.dense)
        elif self.own != 0.0:
            score.scatter_add_(1, idx, self.own * weight)
        if self.neighbours.shape[1] > 0:
            nbr = self.neighbours[idx]  # (B, L, K)
            sim = self.similarity[idx] * weight.unsqueeze(-1)
            score.scatter_add_(1, nbr.reshape(b, -1), sim.reshape(b, -1))
        if self.item_factors.shape[1] > 0:
            score = score + self._user_factors(idx, weight) @ self.item_factors.T
        blocked = exclude & real
        if bool(blocked.any()):
            penalty = torch.where(blocked, torch.full_like(weight, float("inf")), torch.zeros_like(weight))
            score = score.scatter_add(1, idx, -penalty)
        top = torch.topk(score, min(k, n), dim=1)
        return top.indices, top.values

    def _user_factors(self, idx: Tensor, weight: Tensor) -> Tensor:
        """x_u solved from the history, in double precision (B, f)."""
        y = self.item_factors.double()[idx]  # (B, L, f)
        c = self.alpha * weight.double()  # confidence - 1
        present = (weight > 0).double()
        a = self.gram.double().unsqueeze(0) + torch.einsum("blf,bl,blg->bfg", y, c, y)
        rhs = torch.einsum("blf,bl->bf", y, (c + 1.0) * present)
        return torch.linalg.solve(a, rhs).float()
