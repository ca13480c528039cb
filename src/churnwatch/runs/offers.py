"""A run's next-best offers: the configured recommender fitted on the purchases before the test cutoff,
its backtest on the test horizon next to popularity and buy-again (all customers, and the high-risk tier
as the churn model alerted it), and the `Offers` that model.pt carries (docs/RECOMMENDATIONS.md)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from churnwatch.config.schema import RecommenderConfig, typed
from churnwatch.data.schema import CUSTOMER_ID, TIMESTAMP
from churnwatch.errors import ConfigError
from churnwatch.models.recommend.backtest import backtest, evaluate, fit_before
from churnwatch.models.recommend.offers import Offers, OfferSpec
from churnwatch.models.recommend.purchases import ItemColumns
from churnwatch.models.recommend.registry import make_recommender
from churnwatch.models.thresholds import Operating, assign_tiers
from churnwatch.pipeline.dataset import ChurnData
from churnwatch.runs.record import Predictions

log = logging.getLogger(__name__)
BASELINES = ("popularity", "buy_again")


def recommender_config(cfg: DictConfig) -> RecommenderConfig:
    """The run's `recommender` block (none when the config has none)."""
    values = OmegaConf.to_container(cfg.recommender, resolve=True) if cfg.get("recommender") else {}
    return typed(RecommenderConfig, values, "recommender")


def fit_offers(
    cfg: DictConfig, data: ChurnData, op: Operating, predictions: Predictions
) -> tuple[Offers | None, dict[str, Any] | None]:
    """The offers for model.pt and metrics.json's `recommender` block (both None with recommender=none)."""
    rc = recommender_config(cfg)
    if rc.name == "none":
        return None, None
    if not cfg.data.get("item"):
        raise ConfigError(
            f"recommender={rc.name} needs data.item: the event column naming what a purchase bought"
        )
    columns = ItemColumns(str(cfg.data.item), cfg.data.get("item_name"), cfg.data.get("item_category"))
    # only the columns offers read: a log from the cache converts no others
    wanted = dict.fromkeys([CUSTOMER_ID, TIMESTAMP, columns.item, columns.name, columns.category])
    frame = data.log.select([c for c in wanted if c])
    settings = {"min_count": rc.min_count, "half_life_days": rc.half_life_days}
    record: dict[str, Any] = {"name": rc.name, "params": dict(rc.params), "k": rc.k, **settings}
    tested = data.test is not None and "test" in predictions
    # no test cutoff: learn from every purchase
    cutoff = (
        pd.Timestamp(data.test.snaps.cutoff.max())
        if tested
        else pd.Timestamp(frame[TIMESTAMP].max()) + pd.Timedelta(days=1)
    )
    record["fitted_before"] = str(cutoff.date())
    fitted = fit_before(frame, columns, lambda: make_recommender(rc.name, rc.params), cutoff, **settings)
    if tested:  # the fitted model itself, next to the baselines fitted the same way
        ids = pd.Index(data.test.snaps.customer_ids(data.log).astype(str))
        judged = {
            "horizon_days": int(cfg.data.horizon_days),
            "k": rc.k,
            "exclude_days": rc.exclude_days,
            "groups": {"high": ids[assign_tiers(predictions["test"][1], op) == "high"]},
            "half_life_days": rc.half_life_days,
        }
        baselines = {n: (lambda n=n: make_recommender(n)) for n in BASELINES if n != rc.name}
        record["test"] = {
            **backtest(frame, columns, baselines, cutoff, min_count=rc.min_count, **judged),
            rc.name: evaluate(fitted, cutoff, **judged),
        }
        shown = record["test"][rc.name]["all"]
        log.info("offers (%s) on the test horizon: %s", rc.name, {k: round(v, 4) for k, v in shown.items()})
    spec = OfferSpec(
        recommender=rc.name,
        params=dict(rc.params),
        columns=columns,
        catalogue=fitted.catalogue,
        offers=rc.offers,
        half_life_days=rc.half_life_days,
        exclude_days=rc.exclude_days,
        actions=tuple(rc.actions),
        fitted_before=record["fitted_before"],
    )
    record["catalogue_items"] = len(fitted.catalogue)
    return Offers(spec, fitted.recommender.ranker()), record
