"""The recommenders by name, as `recommender.name` picks them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from churnwatch.errors import ConfigError
from churnwatch.models.recommend.als import ALS
from churnwatch.models.recommend.base import Recommender
from churnwatch.models.recommend.buy_again import BuyAgain
from churnwatch.models.recommend.item_knn import ItemKNN
from churnwatch.models.recommend.popularity import Popularity

RECOMMENDERS: dict[str, type[Recommender]] = {cls.name: cls for cls in (Popularity, BuyAgain, ItemKNN, ALS)}


def make_recommender(name: str, params: Mapping[str, Any] | None = None) -> Recommender:
    """The recommender `name` with its `params` (the constructor's keyword arguments)."""
    if name not in RECOMMENDERS:
        raise ConfigError(f"recommender.name must be one of {sorted(RECOMMENDERS)}, got {name!r}")
    try:
        return RECOMMENDERS[name](**dict(params or {}))
    except TypeError as exc:
        raise ConfigError(f"recommender {name}: bad params {dict(params or {})} ({exc})") from exc
