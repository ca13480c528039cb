"""Buy again: each customer is offered the items they bought most often themselves (then the popular ones).

Repeat purchases dominate many retail logs, so this personal baseline is often the one to beat (Bhagat et
al. 2018, "Buy It Again: Modeling Repeat Purchase Recommendations", KDD). Assumes a customer's past item
frequencies predict their next purchases; it never finds an item the customer has not bought.
"""

from __future__ import annotations

import torch

from churnwatch.models.recommend.base import Recommender
from churnwatch.models.recommend.ranker import OfferRanker


class BuyAgain(Recommender):
    name = "buy_again"

    def ranker(self) -> OfferRanker:
        return OfferRanker(torch.tensor(self.popularity_), own=1.0)
