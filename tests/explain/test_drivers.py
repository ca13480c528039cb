"""Drivers: indicator ownership, attribution sums, integrated gradients' completeness, texts, match rate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from churnwatch.explain.drivers import (
    IndicatorCatalogue,
    IndicatorOwners,
    event_positions,
    global_importance,
    indicator_scores,
    integrated_gradients,
    match_rate,
    top_drivers,
)
from churnwatch.explain.playbook import Playbook
from churnwatch.models.encoders import ChurnNet
from churnwatch.runtime.hardware import autocast, forced

CATALOGUE = {
    "spend": {
        "group": "purchase_behaviour",
        "events": "kind == 'purchase'",
        "fields": ["amount"],
        "aggregates": ["spend_*"],
        "truth": "disengagement",
    },
    "activity": {
        "group": "purchase_behaviour",
        "events": "kind == 'purchase'",
        "aggregates": ["recency_days"],
        "values": {"ratio": "recency_days / gap"},
        "text": [
            {
                "when": "recency_days > 2 * gap",
                "say": "no purchase for {recency_days:.0f} days ({ratio:.1f}x)",
            },
            {"say": "buys regularly"},
        ],
        "truth": "disengagement",
    },
    "complaints": {
        "group": "satisfaction_and_service",
        "events": "kind == 'complaint'",
        "text": "{n_complaints:.0f} complaints",
        "truth": "unresolved_complaint",
    },
    "profile": {"group": "customer_profile", "static": ["plan"], "aggregates": ["static_*"]},
}


@pytest.fixture
def catalogue() -> IndicatorCatalogue:
    return IndicatorCatalogue.from_config(CATALOGUE)


def test_first_matching_indicator_owns_each_event_field(catalogue):
    events = pd.DataFrame({"kind": ["purchase", "complaint", "visit"]})
    owner = catalogue.event_owner(events, ["kind", "amount", "age_days"])
    names = np.array(catalogue.names)[owner]
    assert names[0].tolist() == ["activity", "spend", "activity"]  # spend only takes the purchase's amount
    assert names[1].tolist() == ["complaints"] * 3
    assert names[2].tolist() == ["other"] * 3  # no indicator claims visits
    agg = np.array(catalogue.names)[
        catalogue.name_owner(["spend_30d", "recency_days", "static_plan", "x"], "aggregates")
    ]
    assert agg.tolist() == ["spend", "activity", "profile", "other"]
    assert np.array(catalogue.names)[catalogue.name_owner(["plan", "region"], "static")].tolist() == [
        "profile",
        "other",
    ]


def test_unknown_group_or_key_is_a_config_error():
    from churnwatch.errors import ConfigError

    with pytest.raises(ConfigError, match="group"):
        IndicatorCatalogue.from_config({"x": {"group": "vibes"}})
    with pytest.raises(ConfigError, match="unknown keys"):
        IndicatorCatalogue.from_config({"x": {"group": "loyalty", "field": ["a"]}})


def test_indicator_scores_sum_attributions_per_owner(catalogue):
    k = len(catalogue.names)
    owner_event = np.array([[0, 1], [2, 2]])  # flat events 0 and 1, two fields each
    event_attr = np.array([[[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]])  # one customer, 3 steps (last is padding)
    positions = event_positions(np.array([0, 2]), np.array([0]), 3)
    assert positions.tolist() == [[0, 1, -1]]
    owners = IndicatorOwners(owner_event, np.array([3]), np.array([0, 4]), n_indicators=k)
    scores = indicator_scores(owners, event_attr, positions, np.array([[0.5]]), np.array([[10.0, -1.0]]))
    expected = np.zeros(k)
    expected[0] += 1 + 10  # spend: event 0 field 0, aggregate 0
    expected[1] += 2
    expected[2] += 3 + 4
    expected[3] += 0.5
    expected[4] += -1
    np.testing.assert_allclose(scores[0], expected)


def test_integrated_gradients_is_complete_against_the_neutral_reference():
    """Attributions add up to logit(input) - logit(reference): the defining property of the method."""
    torch.manual_seed(0)
    net = ChurnNet([6, 5], 3, [1, 2], [4], 1, n_aggregates=2, encoder="gru", d_model=8, hidden=8).eval()
    lengths = torch.tensor([5, 2, 1])
    cat = torch.randint(1, 5, (3, 5, 2)) * (torch.arange(5)[None, :, None] < lengths[:, None, None])
    num = torch.randn(3, 5, 3) * (torch.arange(5)[None, :, None] < lengths[:, None, None])
    static_cat, static_num, agg = torch.randint(0, 4, (3, 1)), torch.randn(3, 1), torch.randn(3, 2)
    ev, st, ag = integrated_gradients(net, cat, num, lengths, static_cat, static_num, agg, steps=64)
    assert ev.shape == (3, 5, 2 + 3) and st.shape == (3, 2) and ag.shape == (3, 2)
    assert np.abs(ev[1, 2:]).max() == 0  # padding gets nothing
    with torch.no_grad():
        ref_e, ref_s = net.reference_embeddings()
        real = (torch.arange(5)[None, :] < lengths[:, None]).unsqueeze(-1)
        reference = net.logit_from_embedded(
            [real * r for r in ref_e],
            torch.zeros_like(num),
            lengths,
            [r.expand(3, -1) for r in ref_s],
            torch.zeros_like(static_num),
            torch.zeros_like(agg),
        )
        delta = (net(cat, num, lengths, static_cat, static_num, agg) - reference).numpy()
    total = ev.sum(axis=(1, 2)) + st.sum(axis=1) + ag.sum(axis=1)
    np.testing.assert_allclose(total, delta, atol=5e-3)  # Gauss-Legendre quadrature error only


def test_top_drivers_name_positive_indicators_in_words(catalogue):
    k = len(catalogue.names)
    scores = np.zeros((3, k))
    scores[0, [0, 1, 2]] = [0.5, 2.0, 1.0]
    scores[1, catalogue.other] = 5.0  # 'other' is never named
    scores[1, 2] = -1.0
    scores[2, 1] = 0.3
    context = pd.DataFrame(
        {"recency_days": [50.0, 3.0, 5.0], "gap": [10.0, 10.0, 10.0], "n_complaints": [2.0, 0.0, 0.0]}
    )
    out = top_drivers(scores, catalogue, context)
    assert out["main_driver"].tolist() == ["activity", "", "activity"]
    assert out.loc[0, ["driver_1", "driver_2", "driver_3"]].tolist() == [
        "no purchase for 50 days (5.0x)",
        "2 complaints",
        "spend",
    ]
    assert out.loc[1, "driver_1"] == "" and out.loc[2, "driver_1"] == "buys regularly"
    importance = global_importance(scores, catalogue)
    assert importance["share"].sum() == pytest.approx(1.0)
    assert importance.set_index("indicator").loc["activity", "top_driver_share"] == pytest.approx(2 / 3)


def test_match_rate_counts_hits_against_chance(catalogue):
    main = pd.Series(["activity", "complaints", "complaints", "spend", "profile"])
    truth = pd.Series(["disengagement", "unresolved_complaint", "disengagement", "disengagement", None])
    out = match_rate(main, truth, catalogue)
    assert out["customers"] == 4  # profile has no truth mapping, the last has no truth
    assert out["match_rate"] == pytest.approx(3 / 4)
    assert out["majority"] == pytest.approx(3 / 4)
    # predicted disengagement 2/4, complaint 2/4; truth 3/4 and 1/4 → chance 0.5*0.75 + 0.5*0.25
    assert out["chance"] == pytest.approx(0.5)
    assert out["per_driver"]["unresolved_complaint"]["match_rate"] == 1.0


def test_playbook_takes_the_first_matching_rule():
    book = Playbook.from_config(
        {
            "rules": [
                {"tier": ["high"], "driver": ["complaints"], "action": "call"},
                {"tier": ["high", "medium"], "segment": "champions", "action": "reward"},
                {"tier": ["high", "medium"], "action": "win_back"},
                {"action": "none"},
            ]
        }
    )
    frame = pd.DataFrame(
        {
            "risk_tier": ["high", "high", "medium", "low", "high"],
            "main_driver": ["complaints", "price", "complaints", "complaints", "complaints"],
            "rfm_segment": ["lost", "champions", "lost", "champions", "champions"],
        }
    )
    assert book.assign(frame).tolist() == ["call", "reward", "win_back", "none", "call"]
    # the same rules on plain arrays (what ranking passes before it frames its output)
    arrays = {c: frame[c].to_numpy(dtype=object) for c in frame.columns}
    assert book.actions(arrays, len(frame)).tolist() == ["call", "reward", "win_back", "none", "call"]
    from churnwatch.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown conditions"):
        Playbook.from_config({"rules": [{"tiers": ["high"], "action": "x"}]})


def test_tree_path_contributions_add_up_to_the_prediction():
    from sklearn.ensemble import RandomForestClassifier

    from churnwatch.models.tabular import contributions

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4))
    y = (x[:, 0] + 0.5 * x[:, 2] > 0).astype(int)
    forest = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(x, y)
    contrib = contributions(forest, "random_forest", x[:50], x)
    root = np.mean([t.tree_.value[0, 0, 1] / t.tree_.value[0, 0].sum() for t in forest.estimators_])
    np.testing.assert_allclose(contrib.sum(axis=1) + root, forest.predict_proba(x[:50])[:, 1], atol=1e-9)
    assert np.abs(contrib[:, [0, 2]]).sum() > 5 * np.abs(contrib[:, [1, 3]]).sum()  # the informative ones


@pytest.mark.parametrize("encoder", ["lstm", "transformer"])
def test_integrated_gradients_in_bf16_stay_complete_to_bf16_precision(encoder):
    """Scoring explains in its forward's precision: under bf16 autocast (forced where the CPU has no bf16
    units, so both kinds of machine run it) the attributions are bf16's own, not fp32's, and still add up
    to the logit difference within bf16's rounding."""
    torch.manual_seed(0)
    net = ChurnNet([6, 5], 3, [1, 2], [4], 1, n_aggregates=2, encoder=encoder, d_model=16, hidden=16).eval()
    lengths = torch.tensor([9, 4, 1, 6])
    real = torch.arange(9)[None, :, None] < lengths[:, None, None]
    cat, num = torch.randint(1, 5, (4, 9, 2)) * real, torch.randn(4, 9, 3) * real
    static_cat, static_num, agg = torch.randint(0, 4, (4, 1)), torch.randn(4, 1), torch.randn(4, 2)
    args = (net, cat, num, lengths, static_cat, static_num, agg)
    fp32 = integrated_gradients(*args, steps=32)
    with forced(bf16=True), autocast(torch.device("cpu"), True):
        bf16 = integrated_gradients(*args, steps=32)
    fp32_total, bf16_total = (
        ev.sum(axis=(1, 2)) + st.sum(axis=1) + ag.sum(axis=1) for ev, st, ag in (fp32, bf16)
    )
    assert not np.array_equal(fp32[0], bf16[0])  # bf16 arithmetic really ran
    scale = np.abs(fp32_total).max()
    np.testing.assert_allclose(bf16_total, fp32_total, atol=0.05 * scale)
    assert np.corrcoef(fp32[0].ravel(), bf16[0].ravel())[0, 1] > 0.95
