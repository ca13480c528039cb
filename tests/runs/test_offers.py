"""Offers end to end: a run fits the recommender (recommender=item_knn, the default) and model.pt carries it;
scoring gives offer_1..3 to the customers whose action calls for one, popular items to those without a
history, and a model file whose ranker was swapped is refused."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
import torch

from churnwatch.artifact.model_file import META_FILE, OFFERS_FILE, load_model
from churnwatch.errors import ArtifactError
from churnwatch.scoring.scorer import Scorer

OFFER_FIRST = {
    "rules": [
        {"tier": ["high", "medium"], "offer_category": ["grocery"], "action": "grocery_voucher"},
        {"tier": ["high", "medium"], "action": "targeted_offer"},
        {"tier": ["unknown"], "action": "loyalty_reward"},  # no history: a welcome offer
        {"action": "no_action"},
    ]
}


@pytest.fixture(scope="module")
def scored(model: Path) -> pd.DataFrame:
    events = pd.read_parquet(model.parents[1] / "data" / "events.parquet")
    late = events["timestamp"].max() + pd.Timedelta(days=1)
    newcomer = events.iloc[[0]].assign(customer_id="NEW", timestamp=late)  # no history before as_of
    scorer = Scorer(model, device="cpu", drivers={"enabled": False}, playbook=OFFER_FIRST)
    out = scorer.score(pd.concat([events, newcomer]), as_of=late, progress=False)
    return out.set_index("customer_id")


def test_the_model_file_carries_the_fitted_offers(model: Path):
    artifact = load_model(model)
    spec = artifact.offers.spec
    assert spec.recommender == "item_knn" and spec.offers == 3 and spec.columns.item == "item_id"
    assert len(spec.catalogue) == artifact.offers.ranker.n_items() > 10
    assert "__missing__" not in set(spec.catalogue.ids)  # non-purchase rows are no item
    events = pd.read_parquet(model.parents[1] / "data" / "events.parquet")
    names = events.dropna(subset=["item_id"]).groupby("item_id", observed=True)["item_name"].first()
    assert all(names[i] == n for i, n in zip(spec.catalogue.ids, spec.catalogue.names, strict=True))


def test_offers_go_to_the_customers_whose_action_calls_for_one(scored: pd.DataFrame, model: Path):
    offered = scored["action"].isin(["targeted_offer", "win_back_campaign", "loyalty_reward"])
    assert offered.any() and (~offered).any()
    assert (scored.loc[~offered, ["offer_1", "offer_2", "offer_3", "offer_category"]] == "").all().all()
    with_offers = scored[offered]
    assert (with_offers["offer_1"] != "").all() and (with_offers["offer_1_name"] != "").all()
    distinct = with_offers[["offer_1", "offer_2", "offer_3"]].nunique(axis=1)
    assert (distinct == 3).all()  # three different items each
    # the playbook read the first offer's category: grocery offers got their own action (and no offers,
    # since grocery_voucher is not among recommender.actions)
    grocery = scored["action"] == "grocery_voucher"
    assert grocery.any() and (scored.loc[grocery, "offer_1"] == "").all()


def test_a_customer_without_history_gets_the_most_popular_items(scored: pd.DataFrame, model: Path):
    spec = load_model(model).offers.spec
    row = scored.loc["NEW"]
    assert bool(row["no_history"]) and row["action"] == "loyalty_reward"
    popularity = load_model(model).offers.ranker.popularity
    offered = [list(spec.catalogue.ids).index(row[f"offer_{i}"]) for i in (1, 2, 3)]
    assert popularity[offered].tolist() == popularity.sort(descending=True).values[:3].tolist()


def test_a_swapped_offer_ranker_is_refused(model: Path, tmp_path: Path):
    extra = {META_FILE: "", OFFERS_FILE: "", "churnwatch/metadata.sha256": ""}
    module = torch.jit.load(str(model), _extra_files=extra)
    other = torch.jit.load(io.BytesIO(extra[OFFERS_FILE]))
    other.popularity.mul_(-1.0)  # a forged ranker: the popular items last
    buffer = io.BytesIO()
    torch.jit.save(other, buffer)
    forged = {k: v for k, v in extra.items()} | {OFFERS_FILE: buffer.getvalue()}
    torch.jit.save(module, str(tmp_path / "forged.pt"), _extra_files=forged)
    with pytest.raises(ArtifactError, match="offer ranker .* does not match its checksum"):
        load_model(tmp_path / "forged.pt")


def test_the_run_records_the_backtest_and_the_report_shows_it(model: Path):
    import json

    from churnwatch.runs.report import write_report

    run_dir = model.parent
    rec = json.loads((run_dir / "metrics.json").read_text())["recommender"]
    assert rec["name"] == "item_knn" and set(rec["test"]) == {"item_knn", "popularity", "buy_again"}
    for views in rec["test"].values():
        assert set(views) == {"all", "all/new", "high", "high/new"}
        assert 0 <= views["all"]["ndcg@10"] <= 1 and views["all"]["customers"] > 0
    # buy-again can find nothing new: its discovery view is popularity's
    assert rec["test"]["buy_again"]["all/new"] == rec["test"]["popularity"]["all/new"]
    text = write_report(run_dir).read_text()
    assert "<h2>Next-best offers (item_knn)</h2>" in text and "<th>view</th>" in text
