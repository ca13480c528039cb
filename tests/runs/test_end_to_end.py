"""End to end on tiny synthetic data: train (CPU, 1 epoch) → metrics.json + model.pt → score."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pandas as pd
import pytest

from churnwatch.artifact.model_file import load_artifact
from churnwatch.config.compose import compose
from churnwatch.jobs.score import ScoreJob, score_file
from churnwatch.models.metrics import METRIC_NAMES
from churnwatch.runs.train import train
from churnwatch.runtime.hardware import forced
from churnwatch.scoring.output import OUTPUT_COLUMNS
from churnwatch.scoring.scorer import Scorer
from tests.helpers import TINY


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    cfg = compose("train", [f"data.data_dir={root / 'data'}", f"paths.output_dir={root / 'run'}", *TINY])
    (root / "run").mkdir()
    metrics = train(cfg)
    return root, metrics


def test_training_writes_metrics_checkpoint_and_model(trained):
    root, metrics = trained
    run = root / "run"
    saved = json.loads((run / "metrics.json").read_text())
    assert set(saved["test"]) >= {f"test/{m}" for m in (*METRIC_NAMES, "lift_top10", "capture_top10")}
    assert saved["test"]["test/lift_top10"] > 1  # the riskiest decile churns more than average
    assert 0.5 < saved["test"]["test/auroc"] <= 1.0
    assert 0 < saved["threshold"] < 1
    assert saved["val"]["val/threshold"] == pytest.approx(saved["threshold"])  # val of the best checkpoint
    assert saved["tier_cuts"]["high"] >= saved["tier_cuts"]["medium"]
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert saved["report"] == str(run / "report.html") and (run / "report.html").exists()
    assert (run / "logs" / "metrics.csv").exists()
    _, meta = load_artifact(run / "model.pt")
    assert meta["threshold"] == pytest.approx(saved["threshold"])
    assert meta["test_metrics"]["test/auroc"] == pytest.approx(saved["test"]["test/auroc"])
    assert meta["encoder"]["vocabs"]["event_type"][:2] == ["<pad>", "<oov>"]
    assert meta["versions"]["torch"]


def test_scoring_returns_every_input_customer_exactly_once(trained, tmp_path):
    root, _ = trained
    events = pd.read_parquet(root / "data" / "events.parquet")
    # a customer whose only event comes after as_of, and one whose only row is invalid
    extra = events.iloc[[0, 1]].copy()
    extra["customer_id"] = ["Z-late", "Z-invalid"]
    extra["timestamp"] = [pd.Timestamp("2024-12-30"), pd.Timestamp("2024-05-01")]
    extra["amount"] = [10.0, -5.0]  # below min 0: dropped by the policy
    extra["event_type"] = "purchase"
    mixed = pd.concat([events.astype({"customer_id": str}), extra], ignore_index=True).sample(
        frac=1, random_state=0
    )
    path = tmp_path / "events.csv"
    mixed.to_csv(path, index=False)
    job = ScoreJob(
        model_path=root / "run" / "model.pt",
        events_path=path,
        output_path=tmp_path / "scores.csv",
        customers_path=root / "data" / "customers.parquet",
        as_of="2024-11-01",
    )
    result = score_file(job, progress=False)
    out = pd.read_csv(tmp_path / "scores.csv")
    offers = [c for i in (1, 2, 3) for c in (f"offer_{i}", f"offer_{i}_name")] + ["offer_category"]
    assert list(out.columns) == [*OUTPUT_COLUMNS, *offers]  # the run fitted a recommender (the default)
    assert sorted(out["customer_id"]) == sorted(mixed["customer_id"].unique())
    assert out["customer_id"].is_unique
    flagged = out.set_index("customer_id").loc[["Z-late", "Z-invalid"]]
    assert flagged["no_history"].all() and (flagged["risk_tier"] == "unknown").all()
    ranked = out.dropna(subset=["risk_rank"]).sort_values("risk_rank")
    assert ranked["risk_rank"].tolist() == list(range(1, len(ranked) + 1))
    assert ranked["churn_probability"].is_monotonic_decreasing
    assert out["churn_probability"].between(0, 1).all()
    assert set(out["risk_tier"]) <= {"high", "medium", "low", "lapsed", "unknown"}
    assert result.customers == len(out)
    with pytest.raises(FileExistsError):
        score_file(
            ScoreJob(model_path=job.model_path, events_path=path, output_path=job.output_path), progress=False
        )


def test_scores_do_not_depend_on_chunk_size_or_later_events(trained):
    root, _ = trained
    scorer = Scorer(root / "run" / "model.pt", device="cpu", batch_size=64, drivers={"steps": 2})
    events = root / "data" / "events.parquet"
    customers = root / "data" / "customers.parquet"
    a = scorer.score(events, customers, as_of="2024-09-01", chunk_customers=100_000, progress=False)
    b = scorer.score(events, customers, as_of="2024-09-01", chunk_customers=397, progress=False)
    pd.testing.assert_frame_equal(a, b)
    # scoring at a past date ignores everything at or after it: the same as a log cut at that date
    cut = pd.read_parquet(events)
    cut = cut[cut["timestamp"] < pd.Timestamp("2024-09-01")]
    cut_path = root / "cut.parquet"
    cut.to_parquet(cut_path)
    c = scorer.score(cut_path, customers, as_of="2024-09-01", progress=False).set_index("customer_id")
    common = a.set_index("customer_id").loc[c.index]
    assert np.allclose(common["churn_probability"], c["churn_probability"], atol=1e-6)


def test_seeded_cpu_training_is_reproducible(trained, tmp_path):
    root, metrics = trained
    cfg = compose("train", [f"data.data_dir={root / 'data'}", f"paths.output_dir={tmp_path}", *TINY])
    again = train(cfg)
    assert again["test"] == metrics["test"]
    assert again["threshold"] == metrics["threshold"]


def test_resume_from_last_checkpoint_continues_training(trained, tmp_path):
    import torch

    root, _ = trained
    last = root / "run" / "checkpoints" / "last.ckpt"
    done = torch.load(last, map_location="cpu", weights_only=True)
    cfg = compose(
        "train",
        [
            f"data.data_dir={root / 'data'}",
            f"paths.output_dir={tmp_path}",
            *TINY,
            "trainer.max_epochs=2",
            f"ckpt_path={last}",
            "export=false",
        ],
    )
    metrics = train(cfg)
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == done["epoch"] + 1
    assert resumed["global_step"] > done["global_step"]
    assert "test/auroc" in metrics["test"]


def test_resume_with_no_last_checkpoint_fails_instead_of_starting_over(trained, tmp_path):
    root, _ = trained
    cfg = compose(
        "train",
        [f"data.data_dir={root / 'data'}", f"paths.output_dir={tmp_path}", *TINY, "ckpt_path=last"],
    )
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=last: no last\*\.ckpt in .*checkpoints"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_calibration_tiers_and_insights_are_recorded_and_exported(trained):
    root, _ = trained
    run = root / "run"
    saved = json.loads((run / "metrics.json").read_text())
    cal = saved["calibration"]
    assert cal["method"] == "temperature" and cal["temperature"] > 0
    # fitted on validation: never worse there in log loss than the raw probabilities
    assert cal["val"]["log_loss_calibrated"] <= cal["val"]["log_loss_raw"] + 1e-9
    for stage in ("val", "test"):
        table = saved["tiers"][stage]
        assert [t["tier"] for t in table] == ["high", "medium", "low"]
        assert sum(t["customers"] for t in table) == saved["sizes"][f"{stage}_rows"]
        assert table[-1]["cumulative_recall"] == pytest.approx(1.0)
    _, meta = load_artifact(run / "model.pt")
    assert meta["calibration"]["slope"] == pytest.approx(cal["slope"])
    assert meta["tiers"]["expected"] == saved["tiers"]["val"]
    assert len(meta["drivers"]["center"]) == len(saved["insights"]["importance"])
    assert meta["segments"]["rfm"] and meta["segments"]["clusters"]
    drivers = pd.read_parquet(run / "drivers.parquet")
    assert len(drivers) == saved["sizes"]["test_rows"]
    assert {"main_driver", "driver_1", "rfm_segment", "behaviour_cluster"} <= set(drivers.columns)
    assert (drivers["driver_1"] != "").mean() > 0.5
    assert "match" in saved["insights"]  # the synthetic truth is there


def test_scoring_output_has_drivers_value_segments_and_actions(trained, tmp_path):
    root, _ = trained
    common = dict(
        model_path=root / "run" / "model.pt",
        events_path=root / "data" / "events.parquet",
        customers_path=root / "data" / "customers.parquet",
        as_of="2024-11-01",
    )
    playbook = {"rules": [{"tier": ["high"], "action": "call"}, {"action": "no_action"}]}
    by_prob = score_file(
        ScoreJob(output_path=tmp_path / "a.parquet", playbook=playbook, **common), progress=False
    ).output_path
    by_prob = pd.read_parquet(by_prob)
    active = by_prob[by_prob["risk_tier"].isin(["high", "medium", "low"])]
    assert (active["driver_1"] != "").mean() > 0.5
    insights = json.loads((root / "run" / "metrics.json").read_text())["insights"]
    named = {row["indicator"] for row in insights["importance"]} - {"other"}
    assert set(active["main_driver"]) - {""} <= named
    assert active["rfm_segment"].ne("").all() and active["behaviour_cluster"].notna().all()
    np.testing.assert_allclose(active["value_at_risk"], active["churn_probability"] * active["recent_spend"])
    assert (by_prob["action"] == "call").sum() == (by_prob["risk_tier"] == "high").sum()
    job = ScoreJob(
        output_path=tmp_path / "b.parquet", rank_by="value_at_risk", drivers={"enabled": False}, **common
    )
    by_value = score_file(job, progress=False).output_path
    by_value = pd.read_parquet(by_value)
    ranked = by_value.dropna(subset=["risk_rank"]).sort_values("risk_rank")
    assert ranked["value_at_risk"].is_monotonic_decreasing
    assert (by_value["driver_1"] == "").all()
    # the default rule is capacity: top 10% by rank are high, whatever the probabilities
    n = len(ranked)
    assert (ranked["risk_tier"] == "high").sum() == round(0.1 * n)


def test_drivers_about_customer_attributes_read_unknown_when_scored_without_a_customers_file(trained):
    """The model uses customer attributes; scored without them, a driver whose text names one (the
    profile) says "unknown" instead of failing the run. The profile is made everyone's top driver by
    moving its reference point (the attributions are measured against it)."""
    root, _ = trained
    scorer = Scorer(root / "run" / "model.pt", device="cpu", drivers={"steps": 2})
    assert scorer.reader.uses_customers
    scorer.center[scorer.catalogue.names.index("profile")] -= 1e6
    scores = scorer.score(root / "data" / "events.parquet", None, as_of="2024-11-01", progress=False)
    ranked = scores[scores["risk_rank"].notna()]
    assert len(ranked) > 100 and (ranked["main_driver"] == "profile").all()
    assert (ranked["driver_1"] == "profile: unknown, unknown plan, unknown").all()


def test_report_is_a_self_contained_html_page(trained):
    from churnwatch.runs.report import write_report

    root, _ = trained
    path = write_report(root / "run")
    text = path.read_text()
    for section in ("Metrics", "Calibration", "Alert tiers", "Global drivers", "Segments", "Curves"):
        assert f">{section}" in text
    assert text.count("data:image/png;base64,") >= 8
    assert 'src="http' not in text and "href=" not in text  # nothing outside the file


@pytest.mark.slow
def test_report_renders_in_headless_chromium(trained, tmp_path):
    import shutil
    import subprocess

    from churnwatch.runs.report import write_report

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    root, _ = trained
    path = write_report(root / "run")
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'p'}",
            "--window-size=1200,3000",
            f"--screenshot={shot}",
            path.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert image.shape[0] >= 2000
    assert image.std() > 20  # not a blank page: text, tables and charts rendered


def test_shards_merge_into_exactly_the_single_run(trained, tmp_path):
    from churnwatch.scoring.shards import merge_shards, shard_of

    root, _ = trained
    model, events = root / "run" / "model.pt", root / "data" / "events.parquet"
    common = dict(
        model_path=model,
        events_path=events,
        customers_path=root / "data" / "customers.parquet",
        as_of="2024-11-01",
    )
    single = pd.read_parquet(
        score_file(ScoreJob(output_path=tmp_path / "single.parquet", **common), progress=False).output_path
    )
    parts = [
        score_file(
            ScoreJob(output_path=tmp_path / f"part-{i}.parquet", shard=(3, i), **common), progress=False
        ).output_path
        for i in range(3)
    ]
    sizes = [len(pd.read_parquet(p)) for p in parts]
    assert all(s > 0 for s in sizes) and sum(sizes) == len(single)
    assert merge_shards(model, parts, tmp_path / "merged.parquet", block_rows=500) == len(single)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "merged.parquet"), single)
    # the shard of an id is the same in every process (a stable hash, not Python's salted hash())
    import subprocess
    import sys

    code = (
        "import numpy as np; from churnwatch.scoring.shards import shard_of; "
        "print(shard_of(np.array(['C1', 'C2', 'x']), 7))"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(seen) == 1 and str(shard_of(np.array(["C1", "C2", "x"]), 7)) in seen.pop()
    with pytest.raises(ValueError, match="shards"):
        merge_shards(model, parts[:2], tmp_path / "incomplete.parquet")


def test_streamed_scoring_equals_in_memory_for_any_part_block_chunk_size_and_row_order(trained, tmp_path):
    """score_file splits big inputs into customer-disjoint parts on disk and ranks block by block: the
    output must not depend on any of those sizes, nor on the order of the input rows."""
    root, _ = trained
    model, events = root / "run" / "model.pt", root / "data" / "events.parquet"
    customers = root / "data" / "customers.parquet"
    scorer = Scorer(model, device="cpu", drivers={"steps": 2})
    expected = scorer.score(events, customers, progress=False)  # in memory, default as_of
    assert expected["risk_rank"].notna().sum() > 200
    rows = pd.read_parquet(events)
    shuffled = tmp_path / "shuffled.csv"
    rows.sample(frac=1, random_state=1).to_csv(shuffled, index=False)
    for source, sizes in (
        (events, dict(part_events=len(rows) // 7, block_rows=97, chunk_customers=53)),
        (shuffled, dict(part_events=5_000, block_rows=1_000_000, chunk_customers=100_000)),
    ):
        out = tmp_path / f"{source.stem}.parquet"
        job = ScoreJob(
            model_path=model,
            events_path=source,
            output_path=out,
            customers_path=customers,
            device="cpu",
            drivers={"steps": 2},
            **sizes,
        )
        result = score_file(job, progress=False)
        assert result.parts > 3
        pd.testing.assert_frame_equal(pd.read_parquet(out), expected)
        assert result.customers == len(expected) and sum(result.tiers.values()) == len(expected)
        pd.testing.assert_frame_equal(result.top, expected.head(len(result.top)))
    assert not list(tmp_path.glob(".*"))  # the parts on disk are gone
    with pytest.raises(ValueError, match="explicit as_of"):
        job = ScoreJob(
            model_path=model, events_path=events, output_path=tmp_path / "part.parquet", shard=(2, 0)
        )
        score_file(job, progress=False)


@pytest.mark.parametrize("supported", [True, False], ids=["probe-says-bf16", "probe-says-no-bf16"])
def test_bf16_scoring_is_close_to_fp32_batch_invariant_or_falls_back_to_fp32(trained, supported, caplog):
    """Both answers of the bf16 probe, forced, on any machine: bf16 runs (where oneDNN cannot run the LSTM
    in bf16, off oneDNN) close to fp32 and independent of batch and chunk sizes; or the run says why in
    one line and scores exactly as fp32 does."""
    root, _ = trained
    events, customers = root / "data" / "events.parquet", root / "data" / "customers.parquet"
    common = dict(as_of="2024-11-01", progress=False)
    fp32 = Scorer(root / "run" / "model.pt", device="cpu", drivers={"enabled": False})
    exact = fp32.score(events, customers, **common).set_index("customer_id")
    with forced(bf16=supported), caplog.at_level(logging.WARNING, logger="churnwatch.runtime.hardware"):
        bf16 = Scorer(
            root / "run" / "model.pt",
            device="cpu",
            drivers={"enabled": False},
            precision="bf16",
            batch_size=64,
        )
        fast = bf16.score(events, customers, **common).set_index("customer_id")
        bf16.batch_size = 1000
        again = bf16.score(events, customers, chunk_customers=101, **common).set_index("customer_id")
    [line] = [r.getMessage() for r in caplog.records if r.name == "churnwatch.runtime.hardware"]
    assert sorted(fast.index) == sorted(exact.index) == sorted(again.index)
    # batch sizes change matmul shapes: bf16 rounding may move a probability by a hair, no more
    np.testing.assert_allclose(
        again.loc[fast.index, "churn_probability"], fast["churn_probability"], atol=1e-3
    )
    gap = (fast["churn_probability"] - exact.loc[fast.index, "churn_probability"]).abs()
    if supported:
        assert bf16.precision == "bf16" and "forced" in line
        assert 0 < gap.max() < 0.03  # bf16 really ran, and stays close
    else:
        assert bf16.precision == "fp32" and line.startswith("precision=bf16: ") and "scoring in fp32" in line
        assert gap.max() == 0
