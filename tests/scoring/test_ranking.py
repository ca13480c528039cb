"""Ranking in blocks: blocks of the ranked order finished apart (in any order, as a distributed job finishes
them) give the rows the in-memory ranking gives, ties across block edges included."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from churnwatch.scoring.output import OUTPUT_COLUMNS, RANK_KEYS, rank_order
from churnwatch.scoring.ranking import RANK_OUTPUTS, Ranker, carry_after

META = {"threshold": 0.5, "tiers": {"high": 0.8, "medium": 0.6, "rule": {"tiers": "top_fraction"}}}


def population(n: int, seed: int) -> pd.DataFrame:
    """Scored rows whose keys tie a lot (one decimal), with lapsed customers and some without history."""
    rng = np.random.default_rng(seed)
    prob = np.round(rng.uniform(0, 1, n), 1)
    frame = pd.DataFrame({c: [""] * n for c in OUTPUT_COLUMNS if c not in RANK_OUTPUTS})
    return frame.assign(
        customer_id=[f"c{i:04d}" for i in rng.permutation(n)],
        churn_probability=prob,
        value_at_risk=np.round(prob * rng.choice([10.0, 20.0], n), 0),
        no_history=rng.random(n) < 0.1,
        lapsed=rng.random(n) < 0.1,
        n_events=rng.integers(0, 9, n),
    )


@pytest.mark.parametrize("rank_by", ["probability", "value_at_risk"])
@pytest.mark.parametrize("block_rows", [1, 3, 7, 500])
def test_blocks_finished_apart_in_any_order_equal_the_whole_ranking(rank_by: str, block_rows: int) -> None:
    ranker = Ranker.from_meta(META, rank_by=rank_by)
    frame = population(120, seed=block_rows)
    expected = ranker.rank(frame)
    order, n = rank_order(pa.Table.from_pandas(frame[list(RANK_KEYS)]), rank_by)
    ordered = frame.iloc[order].reset_index(drop=True)
    starts = list(range(0, len(ordered), block_rows))
    blocks = [ordered.iloc[s : s + block_rows].reset_index(drop=True) for s in starts]
    carries, carry = [], None
    for start, block in zip(starts, blocks, strict=True):  # the edges alone chain the carries
        carries.append(carry)
        carry = carry_after(ranker.edge(block), start, carry)
    finished = {
        b: ranker.finish_block(blocks[b], starts[b], n, carries[b]) for b in reversed(range(len(blocks)))
    }
    got = pd.concat([finished[b] for b in range(len(blocks))], ignore_index=True)
    assert expected["percentile"].nunique() < n / 2  # ties are many, so runs cross block edges
    pd.testing.assert_frame_equal(got, expected.reset_index(drop=True))
