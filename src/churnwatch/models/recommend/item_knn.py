"""Item-item kNN on co-purchases: items similar to what the customer bought, by cosine similarity of the
items' buyer vectors (Sarwar et al. 2001, "Item-based collaborative filtering recommendation algorithms";
Deshpande & Karypis 2004, "Item-based top-N recommendation algorithms").

Assumes items bought by the same customers are substitutes or complements. Each item keeps its `k` most
similar neighbours (the sparse S of ranker.py). `own` > 0 adds buy-again: own times the customer's own
purchase counts, so items they keep buying stay first and the neighbours fill the rest (in repeat-heavy
logs, kNN alone loses to plain buy-again).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse

from churnwatch.errors import ConfigError
from churnwatch.models.recommend.base import Recommender
from churnwatch.models.recommend.ranker import OfferRanker


class ItemKNN(Recommender):
    name = "item_knn"

    def __init__(self, k: int = 50, shrinkage: float = 10.0, own: float = 0.0, binary: bool = True):
        super().__init__()
        if k < 1 or own < 0 or shrinkage < 0:
            raise ConfigError(
                f"recommender: k must be ≥ 1, own and shrinkage ≥ 0, got k={k}, own={own}, "
                f"shrinkage={shrinkage}"
            )
        self.k, self.shrinkage, self.own, self.binary = int(k), float(shrinkage), float(own), binary
        self.neighbours_ = np.zeros((0, 0), dtype=np.int64)
        self.similarity_ = np.zeros((0, 0))

    def _fit(self, counts: sparse.csr_matrix) -> None:
        super()._fit(counts)
        x = counts.copy()
        if self.binary:
            x.data[:] = 1.0
        x = x.tocsc()
        co = (x.T @ x).toarray()  # items × items co-purchase counts (catalogues of thousands of items)
        norms = np.sqrt(np.diag(co))
        sim = co / (np.outer(norms, norms) + self.shrinkage + 1e-12)
        np.fill_diagonal(sim, 0.0)  # an item is not its own neighbour (that is `own`)
        n = sim.shape[0]
        k = min(self.k, n)
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if n else np.zeros((0, 0), dtype=np.int64)
        order = np.argsort(-np.take_along_axis(sim, top, axis=1), axis=1, kind="stable")
        self.neighbours_ = np.take_along_axis(top, order, axis=1)
        self.similarity_ = np.take_along_axis(sim, self.neighbours_, axis=1)
        self.params_ = {"k": k, "shrinkage": self.shrinkage, "own": self.own, "binary": self.binary}

    def ranker(self) -> OfferRanker:
        return OfferRanker(
            torch.tensor(self.popularity_),
            own=self.own,
            neighbours=torch.tensor(self.neighbours_),
            similarity=torch.tensor(self.similarity_),
        )
