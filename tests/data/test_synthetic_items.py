"""The synthetic generator's items: they leave every other column as it was, each purchase row gets an item of
its own category, the taste clusters and staples are real, and the catalogue and tastes are written."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnwatch.data.synthetic import SyntheticConfig, generate, write
from churnwatch.data.synthetic.columns import CATEGORIES
from churnwatch.data.synthetic.generator import SyntheticData
from churnwatch.data.synthetic.items import draw_items, purchase_items
from churnwatch.data.synthetic.sampling import cumulative, sample_rows
from churnwatch.errors import ConfigError

NO_ITEMS = SyntheticConfig(n_items=0)


@pytest.fixture(scope="module")
def data() -> SyntheticData:
    return generate(2000, seed=3)


def _purchases(data: SyntheticData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(customer code, item code, taste cluster) of every purchase row."""
    ev = data.events
    purchase = (ev["event_type"] == "purchase").to_numpy()
    cust = ev["customer_id"].cat.codes.to_numpy()[purchase]
    item = ev["item_id"].cat.codes.to_numpy()[purchase]
    return cust, item, data.truth["taste_cluster"].to_numpy()[cust]


def _own_vs_other_affinity(data: SyntheticData) -> float:
    """Mean affinity of each bought item under the buyer's cluster over that under the other clusters."""
    _, item, cluster = _purchases(data)
    n_clusters = int(data.tastes["taste_cluster"].max()) + 1
    affinity = data.tastes["affinity"].to_numpy().reshape(n_clusters, -1)
    other = np.stack([np.delete(affinity, k, axis=0).mean(axis=0) for k in range(n_clusters)])
    return float(affinity[cluster, item].mean() / other[cluster, item].mean())


@pytest.mark.parametrize("lines", [None, 3])
def test_items_leave_every_other_column_as_it_was(lines: float | None, tmp_path: Path) -> None:
    plain = generate(1500, seed=7, config=NO_ITEMS, extra_lines_per_purchase=lines)
    with_items = generate(1500, seed=7, extra_lines_per_purchase=lines)
    for name in ("events", "customers", "truth"):
        old, new = getattr(plain, name), getattr(with_items, name)
        assert new[list(old.columns)].equals(old), name
    assert [c for c in with_items.events.columns if c not in plain.events.columns] == ["item_id", "item_name"]
    assert list(with_items.truth.columns) == [*plain.truth.columns, "taste_cluster"]
    # n_items=0 is the log without items: no item columns, no item tables, no item files
    assert "item_id" not in plain.events.columns and "taste_cluster" not in plain.truth.columns
    assert plain.items is None and plain.tastes is None
    assert set(write(plain, tmp_path)) == {"events", "customers", "truth"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "customers.parquet",
        "events.parquet",
        "truth.parquet",
    ]


@pytest.mark.parametrize(("n_items", "lines"), [(400, None), (400, 3), (13, None)])
def test_every_purchase_row_has_an_item_of_its_own_category(n_items: int, lines: float | None) -> None:
    data = generate(800, seed=2, config=SyntheticConfig(n_items=n_items), extra_lines_per_purchase=lines)
    ev, items = data.events, data.items
    purchase = (ev["event_type"] == "purchase").to_numpy()
    for col in ("item_id", "item_name"):
        assert isinstance(ev[col].dtype, pd.CategoricalDtype)
        assert (ev[col].notna().to_numpy() == purchase).all()
    assert ev["item_id"].cat.categories.equals(items["item_id"].cat.categories)
    code = ev["item_id"].cat.codes.to_numpy()[purchase]
    item_category = items["category"].astype(str).to_numpy()[code]
    assert (item_category == ev["category"].astype(str).to_numpy()[purchase]).all()
    assert (
        items["item_name"].astype(str).to_numpy()[code] == ev["item_name"].astype(str).to_numpy()[purchase]
    ).all()


def test_catalogue_and_tastes(data: SyntheticData) -> None:
    items, tastes = data.items, data.tastes
    assert list(items.columns) == ["item_id", "item_name", "category", "popularity"]
    assert len(items) == 400 and items["item_id"].is_unique and items["item_name"].is_unique
    assert items["item_id"].astype(str).str.fullmatch(r"P\d{4}").all()
    assert (items["item_name"].astype(str).str.split(" ").str[0] == items["category"].astype(str)).all()
    assert (items["category"].value_counts().reindex(list(CATEGORIES)) == 50).all()
    popularity = np.sort(items["popularity"].to_numpy())[::-1]
    assert popularity.sum() == pytest.approx(1.0)
    assert 5 < popularity[0] / popularity[9] < 20  # Zipf: the top item ~10x the 10th
    # a cluster's affinities are a distribution within each category, concentrated on a few items
    assert list(tastes.columns) == ["taste_cluster", "item_id", "affinity"]
    assert len(tastes) == 400 * tastes["taste_cluster"].nunique() and tastes["taste_cluster"].nunique() > 1
    frame = tastes.assign(category=np.tile(items["category"].to_numpy(), tastes["taste_cluster"].nunique()))
    by_block = frame.groupby(["taste_cluster", "category"], observed=True)["affinity"]
    np.testing.assert_allclose(by_block.sum().to_numpy(), 1.0)
    top3 = by_block.apply(lambda a: np.sort(a.to_numpy())[-3:].sum())
    assert top3.mean() > 0.45  # ≈ 0.6 with the default concentration (0.1 per item), 0.06 if uniform
    assert set(data.truth["taste_cluster"].unique()) == set(tastes["taste_cluster"].unique())


def test_purchases_follow_the_clusters_taste(data: SyntheticData) -> None:
    assert _own_vs_other_affinity(data) > 3
    tasteless = generate(2000, seed=3, config=SyntheticConfig(taste_share=0.0, staples_per_customer=0))
    assert _own_vs_other_affinity(tasteless) < 1.5  # the statistic measures the taste, nothing else


def test_staples_are_bought_again() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    cat_pref = rng.dirichlet(np.full(len(CATEGORIES), 0.5), size=n)
    cust = np.repeat(np.arange(n), 20)
    cat = sample_rows(rng, cumulative(cat_pref), cust)

    def bought(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: the item, the customer's staples, and which of them are of the row's category."""
        world = draw_items(np.random.default_rng(1), cat_pref, cfg)
        staples = world.staples[cust]
        item = purchase_items(np.random.default_rng(2), world, cfg, cust, cat)
        return item, staples, world.category[staples] == cat[:, None]

    cfg = SyntheticConfig()
    item, staples, match = bought(cfg)
    has = match.any(axis=1)
    share = (staples == item[:, None]).any(axis=1)[has].mean()
    item0, staples0, match0 = bought(replace(cfg, staple_share=0.0))
    by_chance = (staples0 == item0[:, None]).any(axis=1)[match0.any(axis=1)].mean()
    assert share > cfg.staple_share and share > by_chance + 0.3, (share, by_chance)
    # of two staples in the purchase's category, either is bought, about equally often
    rows = np.arange(item.size)
    first, last = np.argmax(match, axis=1), match.shape[1] - 1 - np.argmax(match[:, ::-1], axis=1)
    two = (match.sum(axis=1) == 2) & (staples[rows, first] != staples[rows, last])
    first_share = (item == staples[rows, first])[two].mean()
    last_share = (item == staples[rows, last])[two].mean()
    assert two.sum() > 1000 and 0.15 < first_share < 1.25 * last_share and last_share < 1.25 * first_share


def test_items_and_tastes_written_and_deterministic(data: SyntheticData, tmp_path: Path) -> None:
    paths = write(data, tmp_path)
    assert set(paths) == {"events", "customers", "truth", "items", "tastes"}
    for name in ("items", "tastes"):
        pd.testing.assert_frame_equal(pd.read_parquet(paths[name]), getattr(data, name))
    assert pd.read_parquet(paths["events"]).equals(
        data.events
    )  # .equals: dtypes and values, fast on categoricals
    again, other = generate(2000, seed=3), generate(2000, seed=4)
    for name in ("events", "truth", "items", "tastes"):
        assert getattr(again, name).equals(getattr(data, name)), name
    assert not other.tastes.equals(data.tastes)


@pytest.mark.parametrize(
    "knobs",
    [
        {"n_items": 5},
        {"n_taste_clusters": 0},
        {"staple_share": 1.5},
        {"taste_share": -0.1},
        {"taste_concentration": 0},
    ],
)
def test_item_knobs_it_cannot_honour_are_refused(knobs: dict) -> None:
    with pytest.raises(ConfigError):
        generate(10, seed=0, config=SyntheticConfig(**knobs))
