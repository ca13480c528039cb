"""Implicit-feedback matrix factorisation by alternating least squares (Hu, Koren & Volinsky 2008,
"Collaborative Filtering for Implicit Feedback Datasets", ICDM), fitted with the `implicit` library.

Assumes each purchase count r_ui is a confidence c_ui = 1 + alpha * r_ui that customer u likes item i, and
that low-rank factors explain the likes (p_ui = 1 for every bought item, 0 otherwise). Only the item
factors travel in model.pt: a customer's factors are solved from their own history when they are scored
(ranker.py), exactly as the paper's user step, so new customers and new purchases need no refit. `own` > 0
adds buy-again (own times the customer's purchase counts) to the factor scores.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse

from churnwatch.errors import ConfigError
from churnwatch.models.recommend.base import Recommender
from churnwatch.models.recommend.ranker import OfferRanker


def _implicit_als():  # noqa: ANN202 (the optional package's class)
    try:
        from implicit.cpu.als import AlternatingLeastSquares
    except ImportError as exc:
        raise ConfigError(
            "recommender=als needs the optional package implicit: pip install 'churnwatch[recommend]'"
        ) from exc
    return AlternatingLeastSquares


class ALS(Recommender):
    name = "als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 10.0,
        iterations: int = 15,
        own: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        if factors < 1 or iterations < 1 or alpha <= 0 or regularization < 0:
            raise ConfigError(
                f"recommender: factors and iterations must be ≥ 1, alpha > 0 and regularization ≥ 0, got "
                f"factors={factors}, iterations={iterations}, alpha={alpha}, regularization={regularization}"
            )
        self.factors, self.regularization, self.alpha = int(factors), float(regularization), float(alpha)
        self.iterations, self.seed, self.own = int(iterations), int(seed), float(own)
        self.item_factors_ = np.zeros((0, 0), dtype=np.float32)

    def _fit(self, counts: sparse.csr_matrix) -> None:
        super()._fit(counts)
        confidence = counts.copy()
        confidence.data = 1.0 + self.alpha * confidence.data
        model = _implicit_als()(
            factors=self.factors,
            regularization=self.regularization,
            alpha=1.0,  # the confidences are given as they are
            iterations=self.iterations,
            use_cg=False,  # exact least squares: the user step at scoring time solves the same system
            calculate_training_loss=False,
            random_state=self.seed,
            num_threads=1,
        )
        model.fit(confidence.astype(np.float32).tocsr(), show_progress=False)
        self.item_factors_ = np.asarray(model.item_factors, dtype=np.float32)
        self.params_ = {
            "factors": self.factors,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
            "own": self.own,
        }

    def ranker(self) -> OfferRanker:
        return OfferRanker(
            torch.tensor(self.popularity_),
            own=self.own,
            item_factors=torch.tensor(self.item_factors_),
            regularization=self.regularization,
            alpha=self.alpha,
        )
