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
from churnwatch.explain.playbook import CONDITIONS, Playbook
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
    model_path: Path | str | None = None
    """The model the rows came from, named when a probability is not a number."""
    offer_columns: tuple[str, ...] = ()
    """The model's offer columns (OfferSpec.score_columns), after the standard ones."""
    offer_actions: tuple[str, ...] = ()
    """The actions that carry offers: other rows' offer columns are blank."""
    by_capacity: bool = True
    """A capacity tier rule (top_fraction, top_k) fills the tiers in rank order; False: every rule tiers by
    the probability cut-offs training chose (what a service does: a request is not a population)."""

    def __post_init__(self) -> None:
        if self.rank_by not in RANK_BY:
            raise ConfigError(f"rank_by must be one of {RANK_BY}, got {self.rank_by!r}")

    @classmethod
    def from_meta(
        cls,
        meta: Mapping[str, Any],
        model_path: Path | str | None = None,
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
        return self.rank_within(frame, np.zeros(len(frame), dtype=np.int64))[0]

    def rank_within(self, frame: pd.DataFrame, populations: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
        """`rank` for several populations at once (`populations`: a label ≥ 0 per row; the service ranks
        each request of a micro-batch on its own this way, at the cost of one ranking). The rows come back
        by population label, each ranked; `bounds[i]:bounds[i + 1]` are the rows of the i-th label present."""
        order, _ = rank_order(self.keys(frame), self.rank_by, within=populations)
        label = populations[order]
        starts = np.flatnonzero(np.r_[True, label[1:] != label[:-1]])
        bounds = np.r_[starts, len(order)]
        first = np.repeat(starts, np.diff(bounds))
        position = np.arange(len(order)) - first  # within its population
        ranked = ~(frame["no_history"].to_numpy()[order] | frame["lapsed"].to_numpy()[order])
        size = (
            np.repeat(np.add.reduceat(ranked.astype(np.int64), starts), np.diff(bounds))
            if len(order)
            else position
        )
        # percentile: the share of the population at or below this risk; above = where this key's run starts
        key = frame[self.rank_key].to_numpy()[order]
        new_run = np.r_[True, (label[1:] != label[:-1]) | (key[1:] != key[:-1])]
        above = np.maximum.accumulate(np.where(new_run, np.arange(len(order)), 0)) - first
        percentile = np.where(ranked, 100.0 * (size - above) / np.maximum(size, 1), np.nan)
        return self._finish(frame, order, position, size, percentile), bounds

    def finish_block(
        self, block: pd.DataFrame, start: int, n_ranked: int, carry: Carry = None
    ) -> pd.DataFrame:
        """Rows `start..start + len(block)` of the ranked order → tier, rank, percentile and action, given
        how many customers are ranked in all and the `carry` of the blocks before (`carry_after`): a key
        run that began there goes on here, so the block needs nothing else of the population."""
        position = np.arange(start, start + len(block))
        key = block[self.rank_key].to_numpy()
        return self._finish(block, None, position, n_ranked, _percentile(key, position, n_ranked, carry))

    def tiers_of(self, keys: pa.Table) -> np.ndarray:
        """Each row's risk tier in the population of `keys` (RANK_KEYS) as ranking gives it: high, medium
        or low for the ranked, "" for the lapsed and those without history. Only the rank keys are read,
        so batch scoring knows who is in which tier before it writes a row."""
        order, n = rank_order(keys, self.rank_by)
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        ranked = position < n
        probs = keys.column("churn_probability").to_numpy(zero_copy_only=False)
        tier = np.full(len(position), "", dtype=object)
        tier[ranked] = tiers_at(position[ranked], probs[ranked], n, self.operating, self.by_capacity)
        return tier

    def edge(self, block: pd.DataFrame) -> BlockEdge:
        """What the next block's percentiles need of this one (sorted, riskiest first)."""
        ranked = ~(block["no_history"].to_numpy(dtype=bool) | block["lapsed"].to_numpy(dtype=bool))
        key = block[self.rank_key].to_numpy()[ranked]
        if not len(key):
            return BlockEdge(len(block), 0)
        run = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])[-1]
        return BlockEdge(len(block), len(key), float(key[0]), float(key[-1]), int(run))

    def keys(self, frame: pd.DataFrame) -> pa.Table:
        """The rank keys (RANK_KEYS) of scored rows."""
        # straight into Arrow (Table.from_pandas costs milliseconds even for one row)
        return pa.table({k: pa.array(frame[k]) for k in RANK_KEYS})

    def _finish(
        self,
        frame: pd.DataFrame,
        rows: np.ndarray | None,
        position: np.ndarray,
        size: int | np.ndarray,
        percentile: np.ndarray,
    ) -> pd.DataFrame:
        """`frame`'s rows `rows` (None: all, in order), at rank `position` of populations of `size` ranked
        customers → tier, rank, percentile and action. The output columns are gathered as arrays and framed
        once: a frame's per-column inserts cost more than ranking a request."""
        names = [*OUTPUT_COLUMNS, *self.offer_columns]
        taken = [c for c in (*names, *CONDITIONS.values()) if c not in RANK_OUTPUTS and c in frame]
        columns = {c: _take(frame[c], rows) for c in dict.fromkeys(taken)}
        sizes = np.broadcast_to(np.asarray(size), position.shape)
        ranked = position < sizes
        columns["risk_tier"] = self._tiers(
            np.asarray(columns["no_history"]), np.asarray(columns["churn_probability"]), position, sizes
        )
        columns["risk_rank"] = pd.arrays.IntegerArray(np.where(ranked, position + 1, 0), mask=~ranked)
        columns["percentile"] = percentile
        columns["action"] = self.playbook.actions(columns, len(position))
        out = pd.DataFrame({c: columns[c] for c in names})
        if self.offer_columns:
            out.loc[~out["action"].isin(self.offer_actions), list(self.offer_columns)] = ""
        return out

    def _tiers(
        self, no_history: np.ndarray, probs: np.ndarray, position: np.ndarray, sizes: np.ndarray
    ) -> np.ndarray:
        """Each row's tier at rank `position` of its population of `sizes` ranked customers (a row at or
        past that is lapsed, or unknown without history)."""
        ranked = position < sizes
        tier = np.where(no_history, "unknown", "lapsed").astype(object)
        # capacity rules fill the tiers in rank order of each population; cut-off rules read the probability
        for n in np.unique(sizes[ranked]) if self.by_capacity else [0]:
            sel = ranked & (sizes == n) if self.by_capacity else ranked
            tier[sel] = tiers_at(position[sel], probs[sel], int(n), self.operating, self.by_capacity)
        return tier

    def block_tiers(self, block: pd.DataFrame, start: int, n_ranked: int) -> np.ndarray:
        """The tiers `finish_block` gives the rows of a block of the ranked order at `start`, without the
        rest of its work: who is in which tier, before the rows are finished (`drivers.tiers` on a
        cluster)."""
        position = np.arange(start, start + len(block))
        return self._tiers(
            block["no_history"].to_numpy(dtype=bool),
            block["churn_probability"].to_numpy(dtype=np.float64),
            position,
            np.full(len(block), n_ranked),
        )

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
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        del keys, order
        release_free_memory()
        carry: list[Carry] = [None]  # blocks come in rank order: each hands its key run on to the next

        def finish(block: pd.DataFrame, start: int) -> pd.DataFrame:
            out = self.finish_block(block, start, n, carry[0])
            carry[0] = carry_after(self.edge(block), start, carry[0])
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


RANK_OUTPUTS = ("risk_tier", "risk_rank", "percentile", "action")
"""The columns ranking adds."""


Carry = tuple[float, int] | None
"""Before a block of the ranked order: the last ranked customer's rank key and the position where its run of
equal keys began (None: no ranked customer before the block)."""


@dataclass(frozen=True)
class BlockEdge:
    """A sorted block's ranked rows as the next block sees them (`Ranker.edge`)."""

    rows: int
    ranked: int
    first_key: float = np.nan
    last_key: float = np.nan
    last_run: int = 0
    """Where, in the block, the run of its last ranked key begins."""


def carry_after(edge: BlockEdge, start: int, carry: Carry) -> Carry:
    """The carry after a block at position `start` with this edge, from the carry before it: blocks can be
    finished in any order, or in parallel, once the carries are chained over the edges."""
    if not edge.ranked:
        return carry
    run = start + edge.last_run
    if edge.last_run == 0 and carry is not None and carry[0] == edge.first_key:
        run = carry[1]
    return edge.last_key, run


def _percentile(key: np.ndarray, position: np.ndarray, n: int, carry: Carry) -> np.ndarray:
    """Per row at rank `position`, among the `n` ranked customers: the share at or below this risk (100 =
    the riskiest), i.e. n minus where this key's run of ties began; NaN for the others."""
    ranked = position < n
    percentile = np.full(len(key), np.nan)
    k, pos = key[ranked], position[ranked]
    if not len(k):
        return percentile
    new_run = np.r_[True, k[1:] != k[:-1]]
    run = np.maximum.accumulate(np.where(new_run, pos, 0))
    if carry is not None and k[0] == carry[0]:
        run[np.cumsum(new_run) == 1] = carry[1]
    percentile[ranked] = 100.0 * (n - run) / max(n, 1)
    return percentile


def _take(column: pd.Series, rows: np.ndarray | None) -> Any:
    """A column's values at positions `rows` (None: all), in its own dtype."""
    values = column.array
    return values if rows is None else values.take(rows)


def check_each_once(frame: pd.DataFrame, ids: pa.Array) -> None:
    """Every id of the (distinct) input ids exactly once in the output, or a loud failure: as many rows
    as ids and every id among them leaves no room for a duplicate or a stranger."""
    found = pc.sum(pc.is_in(ids, value_set=pa.array(frame[CUSTOMER_ID]))).as_py() or 0
    if len(frame) != len(ids) or found != len(ids):
        raise RuntimeError(
            f"scoring lost or duplicated customers: {len(ids)} ids in the input, "
            f"{frame[CUSTOMER_ID].nunique()} distinct of {len(frame)} rows in the output"
        )


def check_finite(probs: np.ndarray, customer_ids: np.ndarray, model_path: Path | str | None) -> None:
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
