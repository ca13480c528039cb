"""The recommender base class: `fit` on a purchase matrix, fitted `params_`, and `ranker()`, the TorchScript
module that ranks items inside model.pt (ranker.py)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from scipy import sparse

from churnwatch.models.recommend.ranker import OfferRanker


class Recommender(ABC):
    """Learns item preferences from implicit feedback: `counts` is customers × items purchase counts before
    a cutoff, and nothing after it."""

    name: str = "recommender"

    def __init__(self) -> None:
        self.params_: dict[str, Any] = {}
        self.popularity_: np.ndarray = np.zeros(0)

    def fit(self, counts: sparse.csr_matrix) -> Recommender:
        self._fit(sparse.csr_matrix(counts, dtype=np.float64))
        return self

    def _fit(self, counts: sparse.csr_matrix) -> None:
        """Learn item popularity (every ranker's tie-break and cold-start fallback); a subclass that learns
        more extends this."""
        self.popularity_ = np.asarray(counts.sum(axis=0)).ravel().astype(np.float64)

    @abstractmethod
    def ranker(self) -> OfferRanker:
        """The fitted model as the scripted ranker (ranker.py's linear form)."""
