"""Dense time-to-event supervision: the hazard head's likelihood and survival, its causality, and the
per-step targets with their censoring."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from churnwatch.data.loaders import load_events
from churnwatch.data.schema import EventSchema
from churnwatch.data.snapshots import EventLog, build_snapshot
from churnwatch.features.encode import SequenceEncoder
from churnwatch.features.time_to_event import fill_time_to_event
from churnwatch.models.encoders import ChurnNet
from churnwatch.models.hazard import HazardHead
from tests.helpers import SCHEMA_CFG, train_tiny

BINS = [0.0, 1.0, 7.0, 30.0, 90.0]


def _constant_head(rate: float) -> HazardHead:
    head = HazardHead(4, BINS)
    with torch.no_grad():
        head.proj.bias.fill_(math.log(math.expm1(rate)))
    return head


def test_constant_hazard_is_exponential():
    head = _constant_head(0.05)
    rates = head(torch.zeros(3, 4))
    t = torch.tensor([0.5, 10.0, 200.0])
    assert torch.allclose(head.cumulative(rates, t), 0.05 * t, rtol=1e-4)
    nll = head.nll(rates, t, torch.tensor([1.0, 0.0, 1.0]), torch.ones(3))
    expected = -((math.log(0.05) - 0.05 * 0.5) + (-0.05 * 10.0) + (math.log(0.05) - 0.05 * 200.0)) / 3
    assert nll.item() == pytest.approx(expected, rel=1e-4)
    surv = head.survival(rates, torch.tensor([0.0, 20.0, 100.0]), torch.tensor([30.0, 90.0]))
    assert torch.allclose(surv, torch.exp(-0.05 * torch.tensor([30.0, 90.0])).expand(3, 2), rtol=1e-4)


def test_piecewise_cumulative_hazard_adds_each_bin_s_exposure():
    head = HazardHead(4, BINS)
    rates = torch.tensor([[0.5, 0.1, 0.02, 0.01, 0.001]])
    # 0.5 * 1 + 0.1 * 6 + 0.02 * 23 + 0.01 * 10 at t = 40
    assert float(head.cumulative(rates, torch.tensor([40.0]))) == pytest.approx(0.5 + 0.6 + 0.46 + 0.1)
    assert float(head.bin_rate(rates, torch.tensor([40.0]))) == pytest.approx(0.01)
    assert float(head.bin_rate(rates, torch.tensor([500.0]))) == pytest.approx(0.001)  # open-ended


def test_maximum_likelihood_with_censoring_recovers_the_rate():
    """Exponential times censored at random: the fitted rate is the truth (events / exposure); reading the
    censored times as events would overestimate it by half."""
    gen = torch.Generator().manual_seed(0)
    truth, n = 0.04, 20_000
    times = torch.empty(n).exponential_(truth, generator=gen)
    censor = torch.rand(n, generator=gen) * 60
    t, observed = torch.minimum(times, censor), (times <= censor).float()
    head = HazardHead(1, [0.0, 1000.0])  # one bin over the whole range
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = head.nll(head(torch.zeros(n, 1)), t, observed, torch.ones(n))
        loss.backward()
        opt.step()
    fitted = float(head(torch.zeros(1, 1))[0, 0])
    assert fitted == pytest.approx(float(observed.sum() / t.sum()), rel=0.02)
    assert fitted == pytest.approx(truth, rel=0.05)
    naive = n / float(t.sum())
    assert naive > 1.4 * truth


def _net(encoder: str, only: bool = False) -> ChurnNet:
    torch.manual_seed(0)
    net = ChurnNet(
        [9, 8, 25],
        3,
        [1, 2],
        [4],
        1,
        n_aggregates=0,
        encoder=encoder,
        d_model=16,
        hidden=16,
        n_heads=2,
        pooling="mean",
        head_hidden=8,
        max_len=64,
        tte_bins=BINS,
        tte_only=only,
        horizon_days=30.0,
    )
    torch.nn.init.normal_(net.hazard.proj.weight)  # starts at zero (a flat hazard): make the steps show
    return net.eval()


def _inputs(lengths: list[int], seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, width = len(lengths), max(lengths)
    lengths_t = torch.tensor(lengths)
    mask = torch.arange(width)[None, :] < lengths_t[:, None]
    cat = torch.stack([torch.randint(1, c, (b, width), generator=g) for c in (9, 8, 25)], dim=-1)
    return [
        cat * mask[..., None],
        torch.randn(b, width, 3, generator=g) * mask[..., None],
        lengths_t,
        torch.randint(0, 4, (b, 1), generator=g),
        torch.randn(b, 1, generator=g),
        torch.zeros(b, 0),
    ]


@pytest.mark.parametrize("encoder", ["lstm", "gru", "transformer"])
def test_each_step_s_hazard_sees_only_its_past_and_not_its_age(encoder):
    net = _net(encoder)
    inputs = _inputs([6, 6])
    changed = [t.clone() for t in inputs]
    changed[0][0, 4:] = 1  # later steps of row 0
    changed[1][0, 4:, 0] += 3.0
    aged = [t.clone() for t in inputs]
    aged[1][:, :, 2] += 5.0  # every step's age (num column 2, the last time feature)
    with torch.no_grad():
        _, rates = net.logit_and_hazard(*inputs)
        _, later = net.logit_and_hazard(*changed)
        _, older = net.logit_and_hazard(*aged)
        logit, _ = net.logit_and_hazard(*inputs)
        logit_older, _ = net.logit_and_hazard(*aged)
    assert torch.allclose(rates[0, :4], later[0, :4], atol=1e-6)
    assert not torch.allclose(rates[0, 4:], later[0, 4:], atol=1e-4)
    assert torch.allclose(rates, older, atol=1e-6)  # the age is hidden from the steps ...
    assert not torch.allclose(logit, logit_older, atol=1e-4)  # ... but the churn head reads the recency


def test_hazard_only_churn_is_the_survival_over_the_horizon():
    net = _net("gru", only=True)
    inputs = _inputs([3, 5, 1])
    with torch.no_grad():
        p = torch.sigmoid(net(*inputs))
        surv = net.survival(*inputs, torch.tensor([30.0, 60.0]))
    assert torch.allclose(p, surv[:, 0], atol=1e-5)
    assert (surv[:, 1] < surv[:, 0]).all()
    assert net.head(torch.zeros(1)).numel() == 1  # no churn head: an identity, no parameters
    assert not any(n.startswith("head.") for n, _ in net.named_parameters())


def test_targets_by_hand():
    frame = pd.DataFrame(
        [
            ("a", "2024-01-01", "purchase", "x", 1.0),
            ("a", "2024-01-04", "complaint", None, None),
            ("a", "2024-01-11", "purchase", "x", 1.0),
            ("a", "2024-02-05", "purchase", "x", 1.0),  # 5 days into the label window
            ("b", "2024-01-20", "purchase", "x", 1.0),  # nothing in b's window: censored at its end
            ("b", "2024-03-05", "purchase", "x", 1.0),  # after the window: never read
        ],
        columns=["cid", "ts", "kind", "cat", "amount"],
    )
    loaded = load_events("e.csv", EventSchema.from_config(SCHEMA_CFG), frame=frame, end_date="2030-01-01")
    log = EventLog.from_frame(loaded.frame)
    snap = build_snapshot(log, "2024-01-31", horizon_days=30)
    enc = SequenceEncoder(EventSchema.from_config(SCHEMA_CFG), max_len=10).fit(log, snap)
    seqs = enc.transform(log, snap)
    assert not seqs.tte.any()  # scoring: no targets
    fill_time_to_event(seqs, enc, log, snap, 30)
    assert seqs.tte.tolist() == [3.0, 7.0, 25.0, 41.0]  # a: 3, 7 days to the next; 25 to Feb 5; b: to Mar 1
    assert seqs.tte_observed.tolist() == [True, True, True, False]
    purchases = (log.frame["kind"] == "purchase").to_numpy()
    fill_time_to_event(seqs, enc, log, snap, 30, purchases)  # activity = purchases (data.label_events)
    assert seqs.tte.tolist() == [10.0, 7.0, 25.0, 41.0]
    assert np.array_equal(seqs.tte_observed, [True, True, True, False])


def test_multi_task_training_on_visits_with_customer_weights_exports_and_scores(tmp_path):
    """The dense head trains next to the churn head on visits, with weekly cutoffs and per-customer
    weights; the exported file scores raw events (visits rebuilt from its metadata) with drivers, and its
    survival over several horizons falls with the horizon."""
    from churnwatch.artifact.model_file import load_model
    from churnwatch.scoring.scorer import Scorer

    metrics = train_tiny(
        tmp_path,
        "model.tte.weight=0.5",
        "data.visits.gap_minutes=240",
        "data.max_span_days=365",
        "data.sample_weight=customer",
        "data.snapshot_every_days=7",
        "data.first_train_cutoff=2024-06-01",
        "insights.enabled=true",
    )
    assert math.isfinite(metrics["val"]["val/tte_nll"]) and math.isfinite(metrics["test"]["test/tte_nll"])
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert "visit_lines" in report["sequence_features"]["numeric"]
    cutoffs = pd.to_datetime(report["train_cutoffs"])  # weekly back from the last, as far as June 1st
    assert (np.diff(cutoffs).astype("timedelta64[D]").astype(int) == 7).all()
    assert pd.Timestamp("2024-06-01") <= cutoffs[0] < pd.Timestamp("2024-06-08") and len(cutoffs) == 11
    model = load_model(tmp_path / "run" / "model.pt")
    assert model.meta["encoder"]["visits"]["gap_minutes"] == 240
    events = pd.read_parquet(tmp_path / "data" / "events.parquet")
    customers = pd.read_parquet(tmp_path / "data" / "customers.parquet")
    scores = Scorer(model).score(events, customers, as_of="2024-10-15", progress=False)
    assert scores["customer_id"].is_unique and set(scores["customer_id"]) == set(events["customer_id"])
    assert (scores["driver_1"] != "").any()
    scored_rows = scores[~scores["no_history"]]
    assert scored_rows["expected_purchases"].between(0, 1e3).all()  # the hazard's demand forecast
    assert (scored_rows["expected_spend"] >= 0).all() and (scored_rows["value_at_risk"] >= 0).all()
    busy = scored_rows["expected_purchases"].rank() > 0.5 * len(scored_rows)
    risk = scored_rows["churn_probability"]
    assert risk[busy].mean() < risk[~busy].mean()  # who is forecast to buy more is less likely to leave
    predictions = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    test = predictions[predictions["split"] == "test"].set_index("customer_id")["probability"]
    scored = scores.set_index("customer_id")["churn_probability"].reindex(test.index)
    assert np.allclose(scored.to_numpy(), test.to_numpy(), atol=1e-5)


def test_expected_count_of_a_constant_hazard_is_rate_times_days():
    """A constant hazard is a Poisson process: rate × days expected, whatever the quiet time so far (the
    daily grid counts at most one renewal chain per day, hence the tolerance)."""
    head = _constant_head(0.05)
    rates = head(torch.zeros(2, 4))
    with torch.no_grad():
        count = head.expected_count(rates, torch.tensor([0.0, 40.0]), 90)
    assert torch.allclose(count, torch.full((2,), 0.05 * 90), rtol=0.03)
    flat = HazardHead(4, BINS)
    steep = torch.tensor([[2.0, 0.001, 0.001, 0.001, 0.001]])  # either within a day or (almost) never
    with torch.no_grad():
        fresh = flat.expected_count(steep, torch.tensor([0.0]), 30)
        stale = flat.expected_count(steep, torch.tensor([10.0]), 30)
    assert float(fresh) > 3 and float(stale) < 0.1 * float(fresh)  # 10 quiet days: probably gone
