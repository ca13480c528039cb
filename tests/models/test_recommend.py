"""The recommenders (models/recommend/): the scripted ranker computes each model's documented score, ALS's
scoring-time user step is the paper's (and implicit's), popularity is the fallback, exclusion works, the
metrics are the textbook ones, and nothing after the cutoff reaches a fit."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

from churnwatch.models.recommend.buy_again import BuyAgain
from churnwatch.models.recommend.evaluation import ranking_metrics
from churnwatch.models.recommend.item_knn import ItemKNN
from churnwatch.models.recommend.offers import Histories, recommend
from churnwatch.models.recommend.popularity import Popularity
from churnwatch.models.recommend.purchases import ItemCatalogue, Purchases

HAS_IMPLICIT = importlib.util.find_spec("implicit") is not None


def _counts(seed: int = 0, customers: int = 60, items: int = 12) -> sparse.csr_matrix:
    """Two taste groups: customers 0..29 buy items 0..5, the others items 6..11 (plus a little noise)."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((customers, items))
    for u in range(customers):
        group = np.arange(6) if u < customers // 2 else np.arange(6, 12)
        for i in rng.choice(group, 3, replace=False):
            dense[u, i] = rng.integers(1, 4)
    dense[rng.integers(0, customers, 5), rng.integers(0, items, 5)] += 1
    return sparse.csr_matrix(dense)


def _history(rows: list[list[tuple[int, float]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(1, max(len(r) for r in rows))
    items = torch.full((len(rows), width), -1, dtype=torch.long)
    counts = torch.zeros(len(rows), width)
    for b, r in enumerate(rows):
        for j, (i, c) in enumerate(r):
            items[b, j], counts[b, j] = i, c
    return items, counts, torch.zeros(len(rows), width, dtype=torch.bool)


class _Fixed:
    """Histories whose padded tensors are given (to test `recommend` on a hand-made batch)."""

    def __init__(self, *tensors: torch.Tensor):
        self.tensors = tensors
        self.offsets = np.arange(len(tensors[0]) + 1)  # (the order `recommend` batches in)

    def __len__(self) -> int:
        return len(self.tensors[0])

    def padded(self, rows: np.ndarray, as_of: pd.Timestamp, exclude_days: float | None) -> tuple:
        return tuple(t[rows] for t in self.tensors)


def test_the_ranker_scores_each_model_as_documented_scripted_or_not():
    counts = _counts()
    # 12 items: 4 neighbours each are stored dense (n <= 3K), 3 as neighbour lists
    knn = ItemKNN(k=4, shrinkage=0.0, own=0.5).fit(counts)
    sparse_knn = ItemKNN(k=3, shrinkage=0.0, own=0.5).fit(counts)
    assert knn.ranker().dense.shape == (12, 12) and sparse_knn.ranker().dense.numel() == 0
    # a dense ranker takes the rows of a short batch's items (2 of 12 wide) and multiplies a long one's (4)
    short = [[(0, 2.0), (3, 1.0)], [(7, 1.0)], []]
    for history in (short, [*short, [(1, 1.0), (2, 3.0), (9, 1.0), (11, 2.0)]]):
        items, c, exclude = _history(history)
        for model in (knn, sparse_knn, BuyAgain().fit(counts), Popularity().fit(counts)):
            ranker = model.ranker()
            pop = model.popularity_ / model.popularity_.max()
            expected = np.tile(1e-6 * pop, (len(history), 1))
            for b, row in enumerate(history):
                for i, n in row:
                    if isinstance(model, BuyAgain | ItemKNN):
                        expected[b, i] += n * model.ranker().own
                    if isinstance(model, ItemKNN):
                        expected[b, model.neighbours_[i]] += n * model.similarity_[i]
            for module in (ranker, torch.jit.script(ranker)):
                top, score = module(items, c, exclude, 12)
                got = np.zeros((len(history), 12))
                np.put_along_axis(got, top.numpy(), score.numpy(), axis=1)
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-9)
    # kNN finds the customer's taste group (each item keeps 4 neighbours)
    items, c, exclude = _history(short)
    top, _ = knn.ranker()(items, c, exclude, 4)
    assert set(top[0].tolist()) <= set(range(6)) and set(top[1].tolist()) <= set(range(6, 12))


def test_no_history_gets_popularity_and_excluded_items_are_never_offered():
    counts = sparse.csr_matrix(np.diag([3.0, 9.0, 1.0, 7.0, 5.0, 2.0]))  # popularity order 1, 3, 4
    ranker = BuyAgain().fit(counts).ranker()
    popular = np.array([1, 3, 4])
    items, c, exclude = _history([[], [(int(popular[0]), 5.0), (4, 1.0)]])
    top, _ = ranker(items, c, exclude, 3)
    assert top[0].tolist() == popular.tolist()
    assert top[1, 0].item() == popular[0]  # bought five times: offered first
    exclude[1, 0] = True
    offers = recommend(ranker, _Fixed(items, c, exclude), k=6, as_of=pd.Timestamp(0))
    assert int(popular[0]) not in offers[1].tolist() and offers[1].tolist()[-1] == -1


@pytest.mark.skipif(
    not HAS_IMPLICIT, reason="implicit (pip install 'churnwatch[recommend]') is not installed"
)
def test_als_solves_the_users_factors_as_the_paper_and_implicit_do():
    from implicit.cpu.als import AlternatingLeastSquares

    from churnwatch.models.recommend.als import ALS

    counts = _counts()
    als = ALS(factors=4, regularization=0.1, alpha=2.0, iterations=5).fit(counts)
    ranker = als.ranker()
    u = 3
    row = counts[u]
    items, c, _ = _history([list(zip(row.indices.tolist(), row.data.tolist(), strict=True))])
    ours = ranker._user_factors(items.clamp(min=0), c).numpy()[0]
    model = AlternatingLeastSquares(factors=4, regularization=0.1, alpha=1.0, use_cg=False)
    model.item_factors = als.item_factors_
    confidence = row.copy()
    confidence.data = 1.0 + 2.0 * confidence.data
    theirs = model.recalculate_user(0, confidence.astype(np.float32).tocsr())
    np.testing.assert_allclose(ours, np.asarray(theirs).ravel(), rtol=1e-3, atol=1e-4)
    # the taste groups come out: customer 3's best offers are items of its group
    top, _ = ranker(*_history([list(zip(row.indices.tolist(), row.data.tolist(), strict=True))]), 3)
    assert set(top[0].tolist()) <= set(range(6))


def test_ranking_metrics_match_a_hand_computed_example():
    offers = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    relevant = sparse.csr_matrix(
        np.array(
            [
                [0, 1, 0, 0, 0, 0, 0, 0, 1, 0],  # item 1 at rank 2 hit, item 8 missed
                [0, 0, 0, 0, 0, 0, 0, 0, 0, 1],  # nothing hit
                [0] * 10,  # bought nothing: not counted
            ]
        )
    )
    m = ranking_metrics(offers, relevant, k=3, n_items=10)
    assert m["customers"] == 2 and m["hr@3"] == 0.5 and m["recall@3"] == pytest.approx(0.25)
    ideal = 1 + 1 / np.log2(3)
    assert m["ndcg@3"] == pytest.approx((1 / np.log2(3)) / ideal / 2)
    assert m["coverage"] == pytest.approx(0.9)


def test_histories_count_purchases_before_the_date_only_and_mark_recent_ones():
    frame = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "b", "b"],
            "timestamp": pd.to_datetime(
                ["2024-01-01", "2024-01-20", "2024-02-05", "2024-01-10", "2024-03-01"]
            ),
            "item": ["x", "x", "y", "z", None],
        }
    )
    catalogue = ItemCatalogue.of(frame, "item")
    assert catalogue.ids.tolist() == ["x", "y", "z"]
    purchases = Purchases.of(frame, "item", catalogue).before(pd.Timestamp("2024-02-01"))
    hist = Histories.of(purchases, pd.Index(["b", "a", "new"]))
    items, counts, exclude = hist.padded(np.arange(3), pd.Timestamp("2024-02-01"), exclude_days=15)
    assert items.tolist() == [[2], [0], [-1]]  # y was bought after the date
    assert counts[1, 0] == 2 and exclude.tolist() == [[False], [True], [False]]  # x last on 2024-01-20
    offers = recommend(
        Popularity().fit(purchases.matrix(3)).ranker(), hist, k=2, as_of=pd.Timestamp("2024-02-01")
    )
    assert offers[2].tolist() == [0, 2]  # x (bought twice), then z


def test_a_categorical_frame_gives_the_purchases_and_histories_its_strings_give():
    """The canonical frame's categorical ids and items are looked up by code; the result is the one plain
    strings give, unused and missing categories included."""
    rng = np.random.default_rng(3)
    n = 400
    frame = pd.DataFrame(
        {
            "customer_id": rng.choice([f"c{i}" for i in range(30)], n),
            "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 90, n), "D"),
            "item": rng.choice(["x", "y", "z", "w", "__missing__", None], n),
        }
    ).sort_values(["customer_id", "timestamp"], ignore_index=True)
    catalogue = ItemCatalogue.of(frame[frame["item"] != "w"], "item")  # w: bought, not in the catalogue
    categorical = frame.astype({"customer_id": "category", "item": "category"})
    categorical["customer_id"] = categorical["customer_id"].cat.add_categories(["nobody"])
    plain, coded = (Purchases.of(f, "item", catalogue) for f in (frame, categorical))
    assert len(plain.item) and (plain.item >= 0).all() and "w" not in catalogue.ids
    assert plain.customers.tolist() == coded.customers.tolist()
    for field in ("customer", "item", "time"):
        np.testing.assert_array_equal(getattr(plain, field), getattr(coded, field))
    who = pd.Index(["c3", "nobody", "c0", "c17"])
    a, b = (Histories.of(p, who, as_of=pd.Timestamp("2024-04-01"), half_life_days=30) for p in (plain, coded))
    for field in ("offsets", "item", "count", "last"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def _with_items(events: pd.DataFrame) -> pd.DataFrame:
    """The hand-made log with an item per purchase (its category and a digit of its amount) and names."""
    out = events.copy()
    buy = out["kind"] == "purchase"
    digit = (out.loc[buy, "amount"].fillna(0).astype(int) % 5).astype(str)
    out.loc[buy, "item"] = out.loc[buy, "cat"].astype(str) + digit
    out.loc[buy, "item_name"] = "thing " + out.loc[buy, "item"]
    return out


def test_nothing_at_or_after_the_cutoff_reaches_a_fit(tmp_path):
    """Changing and adding events from the cutoff on (tests/helpers.tamper_from) leaves the catalogue and
    every fitted tensor of every recommender exactly as they were."""
    from churnwatch.data.loaders import load_events
    from churnwatch.data.schema import EventSchema
    from churnwatch.models.recommend.backtest import fit_before
    from churnwatch.models.recommend.purchases import ItemColumns
    from churnwatch.models.recommend.registry import RECOMMENDERS, make_recommender
    from tests.helpers import LEAKAGE_TEST_CUTOFF, SCHEMA_CFG, make_events, tamper_from

    cutoff = pd.Timestamp(LEAKAGE_TEST_CUTOFF)
    clean = _with_items(make_events(60, seed=4))
    tampered = _with_items(tamper_from(make_events(60, seed=4), LEAKAGE_TEST_CUTOFF))
    schema = EventSchema.from_config({**SCHEMA_CFG, "item": "item", "item_name": "item_name"})
    columns = ItemColumns("item", "item_name")
    names = [n for n in RECOMMENDERS if n != "als" or HAS_IMPLICIT]
    for name in names:
        fits = []
        for raw in (clean, tampered):
            frame = load_events("<events>", schema, frame=raw, end_date="2030-01-01").frame
            fits.append(fit_before(frame, columns, lambda n=name: make_recommender(n), cutoff, min_count=1))
        a, b = fits
        assert a.catalogue.ids.tolist() == b.catalogue.ids.tolist()
        assert a.catalogue.names.tolist() == b.catalogue.names.tolist()
        for key, tensor in a.recommender.ranker().state_dict().items():
            assert torch.equal(tensor, b.recommender.ranker().state_dict()[key]), (name, key)


def test_item_columns_ride_along_without_changing_the_events_and_are_required_only_to_fit(caplog):
    """Naming the item columns leaves every loaded event as it was (they neither make rows distinct nor
    order them); a log without them loads with a warning, and fitting a recommender on it is refused."""
    from churnwatch.data.loaders import load_events
    from churnwatch.data.schema import EventSchema
    from churnwatch.errors import ConfigError
    from tests.helpers import SCHEMA_CFG, make_events

    raw = _with_items(make_events(50, seed=2))
    dup = raw[raw["kind"] == "purchase"].head(3).assign(item="zz", item_name="other")  # other items
    raw = pd.concat([raw, dup], ignore_index=True)
    plain = load_events("<e>", EventSchema.from_config(SCHEMA_CFG), frame=raw, end_date="2030-01-01")
    with_items = load_events(
        "<e>",
        EventSchema.from_config({**SCHEMA_CFG, "item": "item", "item_name": "item_name"}),
        frame=raw,
        end_date="2030-01-01",
    )
    pd.testing.assert_frame_equal(with_items.frame[plain.frame.columns], plain.frame)
    assert with_items.report.dropped == plain.report.dropped
    without = load_events(
        "<e>",
        EventSchema.from_config({**SCHEMA_CFG, "item": "item"}),
        frame=raw.drop(columns=["item", "item_name"]),
        end_date="2030-01-01",
    )
    assert "no column 'item' (data.item)" in caplog.text and "item" not in without.frame
    with pytest.raises(ConfigError, match=r"data.item='item' is not a column of the events"):
        ItemCatalogue.of(without.frame, "item")


def test_collaborative_filtering_recovers_the_synthetic_tastes():
    """On the synthetic log, the items item-kNN offers a customer that they never bought sit higher in their
    true taste cluster's affinities (truth: tastes.parquet) than what popularity offers them."""
    from churnwatch.data.loaders import load_events
    from churnwatch.data.schema import EventSchema
    from churnwatch.data.synthetic import generate
    from churnwatch.models.recommend.backtest import fit_before
    from churnwatch.models.recommend.purchases import ItemColumns

    data = generate(3000, seed=3)
    cfg = {
        "customer_id": "customer_id",
        "timestamp": "timestamp",
        "categorical": ["event_type", "category"],
        "item": "item_id",
        "item_name": "item_name",
    }
    frame = load_events(
        "<synthetic>", EventSchema.from_config(cfg), frame=data.events, end_date="2030-01-01"
    ).frame
    cutoff = pd.Timestamp("2024-09-01")
    cluster = data.truth.set_index("customer_id")["taste_cluster"]
    affinity = data.tastes.pivot(index="taste_cluster", columns="item_id", values="affinity")
    mean_affinity = {}
    for name, make in (("popularity", Popularity), ("item_knn", lambda: ItemKNN(k=50))):
        fitted = fit_before(frame, ItemColumns("item_id", "item_name"), make, cutoff, min_count=1)
        history = fitted.purchases.before(cutoff)
        customers = pd.Index(history.customers[np.unique(history.customer)])
        offers = recommend(
            fitted.recommender.ranker(),
            Histories.of(history, customers),
            k=5,
            as_of=cutoff,
            exclude_days=float("inf"),
        )  # items new to the customer only
        items = fitted.catalogue.ids[offers]
        rows = affinity.loc[cluster.reindex(customers).to_numpy()]
        mean_affinity[name] = float(np.mean([rows.iloc[i][items[i]].mean() for i in range(len(customers))]))
    assert mean_affinity["item_knn"] > 1.5 * mean_affinity["popularity"], mean_affinity
