"""Ranking scored customers: rank, tier, percentile and the playbook's action, in memory or block by block.

Ranking needs only what the artifact's metadata says about tiers (the operating point), the playbook and
the rank key, not the network: merging shard parts ranks with the same `Ranker` that scoring uses, so the
union of the parts is row for row the output of one unsharded run. The checks that guard every output
(each customer exactly once, every probability a number in [0, 1]) live here too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from churnwatch.config.schema import ScoreConfig
from churnwatch.data.schema import CUSTOMER_ID
from churnwatch.data.validation import some_of
from churnwatch.errors import ConfigError
from churnwatch.explain.playbook import Playbook
from churnwatch.models.recommend.offers import OfferSpec
from churnwatch.models.thresholds import Operating, tiers_at
from churnwatch.runtime.memory import release_free_memory
from churnwatch.scoring.output import OUTPUT_COLUMNS, RANK_KEYS, rank_order, read_rank_keys, write_ranked

RANK_BY = ("probability", "value_at_risk")


@dataclass(frozen=True)
class Ranker:
    """How a population is ranked and tiered: by `rank_by`, at the model's operating point, with the
    playbook's actions. A pure function of the rows, so shards merge exactly."""

    operating: Operating
    playbook: Playbook
    rank_by: str = ScoreConfig.rank_by
    model_path: Path | None = None
    """The model the rows came from, named when a probability is not a number."""
    offer_columns: tuple[str, ...] = ()
    """The model's offer columns (OfferSpec.score_columns), after the standard ones."""
    offer_actions: tuple[str, ...] = ()
    """The actions that carry offers: other rows' offer columns are blank."""

    def __post_init__(self) -> None:
        if self.rank_by not in RANK_BY:
            raise ConfigError(f"rank_by must be one of {RANK_BY}, got {self.rank_by!r}")

    @classmethod
    def from_meta(
        cls,
        meta: Mapping[str, Any],
        model_path: Path | None = None,
        *,
        playbook: Mapping[str, Any] | None = None,
        rank_by: str = ScoreConfig.rank_by,
    ) -> Ranker:
        """The ranker of a model, from its artifact's metadata (threshold and tiers); without a playbook
        every customer's action is no_action."""
        tiers = meta["tiers"]
        operating = Operating(meta["threshold"], tiers["high"], tiers["medium"], tiers.get("rule", {}))
        offers = OfferSpec.from_state(meta["offers"]) if meta.get("offers") else None
        return cls(
            operating,
            Playbook.from_config(playbook or {"rules": [{"action": "no_action"}]}),
            rank_by,
            model_path,
            offer_columns=offers.score_columns if offers else (),
            offer_actions=offers.actions if offers else (),
        )

    @property
    def rank_key(self) -> str:
        return "churn_probability" if self.rank_by == "probability" else "value_at_risk"

    def rank(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Rank and tier the population by `rank_by`, then the playbook's action, in memory (`write_ranked`
        does it block by block with the same `rank_order` and `finish_block`). Lapsed customers (no event
        within the training lookback) keep their probability but get tier 'lapsed' and no rank; customers
        without history get tier 'unknown'."""
        keys = pa.Table.from_pandas(frame[list(RANK_KEYS)], preserve_index=False)
        order, n = rank_order(keys, self.rank_by)
        ranked_keys = frame[self.rank_key].to_numpy()[order[:n]]
        return self.finish_block(frame.iloc[order].reset_index(drop=True), 0, ranked_keys)

    def finish_block(self, block: pd.DataFrame, start: int, ranked_keys: np.ndarray) -> pd.DataFrame:
        """Rows `start..start + len(block)` of the ranked order → tier, rank, percentile and action, given
        `ranked_keys`: the rank key of every ranked customer, riskiest first."""
        n = len(ranked_keys)
        position = np.arange(start, start + len(block))
        ranked = position < n
        out = block.reset_index(drop=True)
        tier = np.where(out["no_history"], "unknown", "lapsed").astype(object)
        # capacity rules fill the tiers in rank order; cut-off rules read the probability
        tier[ranked] = tiers_at(
            position[ranked], out["churn_probability"].to_numpy()[ranked], n, self.operating
        )
        out["risk_tier"] = tier
        out["risk_rank"] = pd.array(np.where(ranked, position + 1, 0), dtype="Int64")
        out.loc[~ranked, "risk_rank"] = pd.NA
        # percentile among ranked customers: share at or below this risk (100 = the riskiest)
        key = out[self.rank_key].to_numpy()[ranked]
        below = n - np.searchsorted(-ranked_keys, -key, side="left")
        percentile = np.full(len(out), np.nan)
        percentile[ranked] = 100.0 * below / max(n, 1)
        out["percentile"] = percentile
        out["action"] = self.playbook.assign(out)
        if self.offer_columns:
            out.loc[~out["action"].isin(self.offer_actions), list(self.offer_columns)] = ""
        return out[[*OUTPUT_COLUMNS, *self.offer_columns]]

    def write_ranked(
        self,
        runs: list[str | Path],
        output_path: str | Path,
        *,
        overwrite: bool = False,
        drop: tuple[str, ...] = (),
        block_rows: int = ScoreConfig.block_rows,
        on_block: Callable[[pd.DataFrame], None] | None = None,
    ) -> int:
        """Rank the rows of unranked runs (scored parts, shard parts) as one population and write them,
        riskiest first, block by block: only the rank keys of the whole population are in memory."""
        keys = read_rank_keys(runs)
        release_free_memory()  # each step's scratch space (read buffers, hash table, sort) goes back first
        distinct = pc.count_distinct(keys.column(CUSTOMER_ID)).as_py()
        release_free_memory()
        if distinct != len(keys):
            raise RuntimeError(
                f"scoring lost or duplicated customers: {len(keys)} rows, {distinct} distinct ids in {runs}"
            )
        order, n = rank_order(keys, self.rank_by)
        ranked_keys = keys.column(self.rank_key).to_numpy()[order[:n]]
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        del keys, order
        release_free_memory()

        def finish(block: pd.DataFrame, start: int) -> pd.DataFrame:
            out = self.finish_block(block, start, ranked_keys)
            check_finite(out["churn_probability"].to_numpy(), out[CUSTOMER_ID].to_numpy(), self.model_path)
            if on_block is not None:
                on_block(out)
            return out

        return write_ranked(
            runs,
            output_path,
            position=position,
            finish=finish,
            block_rows=block_rows,
            overwrite=overwrite,
            drop=drop,
        )


def check_each_once(frame: pd.DataFrame, ids: pa.Array) -> None:
    """Every id of the (distinct) input ids exactly once in the output, or a loud failure: as many rows
    as ids and every id among them leaves no room for a duplicate or a stranger."""
    found = pc.sum(pc.is_in(ids, value_set=pa.array(frame[CUSTOMER_ID]))).as_py() or 0
    if len(frame) != len(ids) or found != len(ids):
        raise RuntimeError(
            f"scoring lost or duplicated customers: {len(ids)} ids in the input, "
            f"{frame[CUSTOMER_ID].nunique()} distinct of {len(frame)} rows in the output"
        )


def check_finite(probs: np.ndarray, customer_ids: np.ndarray, model_path: Path | None) -> None:
    """A probability that is not a number (or outside [0, 1]) would rank anywhere: fail, naming the
    customers, instead, at the forward and again on each ranked block before the output is renamed into
    place. Inputs are finite by construction (validation, then clipping in the encoders), so this is the
    model's doing, e.g. weights that went NaN in training."""
    finite = np.isfinite(probs)
    bad = ~finite | (np.where(finite, probs, 0.0) < 0) | (np.where(finite, probs, 0.0) > 1)
    if bad.any():
        what = "a non-finite churn probability" if not finite.all() else "a churn probability outside [0, 1]"
        raise FloatingPointError(
            f"{model_path}: the model gave {what} for {int(bad.sum())} of {len(probs)} customers, e.g. "
            f"{some_of(np.asarray(customer_ids)[bad])}; nothing was written (are its weights finite?)"
        )
