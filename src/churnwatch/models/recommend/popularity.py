"""Global popularity: everyone is offered the items bought most often before the cutoff.

The baseline any recommender must beat (e.g. Cremonesi, Koren & Turrin 2010, "Performance of recommender
algorithms on top-N recommendation tasks"): it needs no history, so it is also what a customer without
purchases gets from every other recommender.
"""

from __future__ import annotations

import torch

from churnwatch.models.recommend.base import Recommender
from churnwatch.models.recommend.ranker import OfferRanker


class Popularity(Recommender):
    name = "popularity"

    def ranker(self) -> OfferRanker:
        return OfferRanker(torch.tensor(self.popularity_))
