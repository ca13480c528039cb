"""Preparing training snapshots on a Ray cluster (engine=ray) builds what one machine builds from the same
rows: a local cluster started by the test, a partitioned parquet dataset whose customers are spread over
files and row groups, some invalid rows, and several parts. The result is an encoded-cache entry that a
later single-machine run finds instead of building."""

from __future__ import annotations

import logging
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from churnwatch.config.compose import compose
from churnwatch.data import synthetic
from churnwatch.errors import ConfigError, DataValidationError
from churnwatch.pipeline.build import build_data
from churnwatch.pipeline.dataset import ChurnData, as_dict, encode_data
from tests.helpers import LEAKAGE_TRAIN_CUTOFFS, leakage_cfg, make_events, tamper_from

ray = pytest.importorskip("ray", reason="engine=ray needs Ray Data: pip install 'churnwatch[distributed]'")
from churnwatch.jobs.prepare_ray import prepare_on_ray  # noqa: E402  (after the skip: it imports ray)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def partitioned(table: pa.Table, root: Path, files: int, row_group: int) -> None:
    """`table` cut by position (a customer's rows land in several files) into hive partitions `month=<k>`
    with row groups of `row_group` rows."""
    size = -(-len(table) // files)
    for k in range(files):
        (root / f"month={k + 1}").mkdir(parents=True)
        pq.write_table(
            table.slice(k * size, size), root / f"month={k + 1}" / "part-0.parquet", row_group_size=row_group
        )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic events (3 of them invalid: no timestamp) in 3 hive partitions, customers in 2."""
    root = tmp_path_factory.mktemp("prepare_ray")
    synthetic.write(synthetic.generate(n_customers=600, seed=3), root / "src")
    events = pd.read_parquet(root / "src" / "events.parquet")
    bad = events.iloc[:3].assign(timestamp=pd.NaT)
    events = pd.concat([events.iloc[:5000], bad, events.iloc[5000:]], ignore_index=True)
    partitioned(pa.Table.from_pandas(events, preserve_index=False), root / "events", 3, 2_000)
    partitioned(pq.read_table(root / "src" / "customers.parquet"), root / "customers", 2, 100)
    return root


def data_config(root: Path, cache: Path, *overrides: str) -> dict:
    """The default (synthetic) data config over the partitioned dataset, its cache in `cache`."""
    return as_dict(
        compose(
            "prepare",
            [
                f"data.events_path={root / 'events'}",
                f"data.customers_path={root / 'customers'}",
                "data.generate=null",
                f"data.cache.dir={cache}",
                *overrides,
            ],
            output_dir=cache.parent / "run",
        ).data
    )


def _used(frame: pd.DataFrame) -> pd.DataFrame:
    """Categories no row uses dropped: one machine keeps those a file's parquet dictionary holds, a cluster
    decodes them away; neither changes an encoding."""
    frame = frame.copy()
    for col in frame.columns:
        if isinstance(frame[col].dtype, pd.CategoricalDtype):
            frame[col] = frame[col].cat.remove_unused_categories()
    return frame


def assert_prepared_alike(local: ChurnData, dist: ChurnData) -> None:
    """Every array, fitted state, report and frame alike: integers, ids and flags exactly, floating-point
    values to rounding (statistics summed part by part, in another order)."""
    for name in ("train", "val", "test"):
        a, b = getattr(local, name), getattr(dist, name)
        for f in ("customer", "cutoff", "start", "end", "label"):
            assert_array_equal(getattr(a.snaps, f), getattr(b.snaps, f), err_msg=f"{name}.snaps.{f}")
        for f in ("offsets", "cat", "static_cat", "label", "cutoff", "tte_observed", "customer_id"):
            assert_array_equal(getattr(a.seqs, f), getattr(b.seqs, f), err_msg=f"{name}.seqs.{f}")
        for f in ("num", "static_num", "tte", "weight"):
            x, y = getattr(a.seqs, f), getattr(b.seqs, f)
            assert x.dtype == y.dtype
            assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=f"{name}.seqs.{f}")
        assert (a.aggregates.names, a.aggregates.categorical) == (
            b.aggregates.names,
            b.aggregates.categorical,
        )
        assert_allclose(a.aggregates.values, b.aggregates.values, rtol=1e-5, atol=1e-5)
    want, got = local.encoder.state(), dist.encoder.state()
    for key in want:
        if key in ("numeric", "static_numeric"):
            assert_allclose(got[key]["mean"], want[key]["mean"], rtol=1e-9)
            assert_allclose(got[key]["std"], want[key]["std"], rtol=1e-9)
        else:
            assert got[key] == want[key], key
    want, got = local.featurizer.state(), dist.featurizer.state()
    for key in want:
        if key in ("fill", "trend_smoothing"):
            assert list(got[key]) == list(want[key])
            assert_allclose(list(got[key].values()), list(want[key].values()), rtol=1e-9)
        elif key in ("scale_mean", "scale_std"):
            assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-12)
        else:
            assert got[key] == want[key], key
    assert [r.as_dict() for r in dist.reports] == [r.as_dict() for r in local.reports]
    pd.testing.assert_frame_equal(_used(dist.log.frame), _used(local.log.frame))
    if (
        local.customers is not None
    ):  # a cluster's customers come in id-range order, one machine's in file order
        pd.testing.assert_frame_equal(_used(dist.customers.sort_index()), _used(local.customers.sort_index()))
    assert dist.summary() == local.summary()


@pytest.mark.slow
def test_the_cluster_prepares_what_one_machine_prepares(
    dataset: Path, cluster: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = data_config(dataset, tmp_path / "cache")
    local = encode_data({**cfg, "cache": {"enabled": False}})
    assert local.reports[0].dropped == {"bad_timestamp": 3}
    dist = prepare_on_ray(cfg, {}, part_events=4_000)  # about 6 parts
    assert_prepared_alike(local, dist)
    assert isinstance(dist.train.seqs.cat, np.memmap)
    assert not list((tmp_path / "cache").glob(".tmp-*"))  # neither the parts nor a half-built entry left
    # one machine, same config: the entry is found, nothing is read or encoded again
    with caplog.at_level(logging.INFO, logger="churnwatch.pipeline.cache"):
        again = build_data(cfg)
    assert f"encoded cache hit {tmp_path / 'cache'}" in caplog.text
    assert_prepared_alike(local, again)


@pytest.mark.slow
def test_folds_learning_curves_and_customer_weights_split_as_one_machine_does(
    dataset: Path, cluster: None, tmp_path: Path
) -> None:
    cfg = data_config(
        dataset,
        tmp_path / "cache",
        "+data.fold=1",
        "+data.folds=3",
        "data.train_fraction=0.5",
        "data.sample_weight=customer",
        "data.train_cutoffs=[2024-06-01,2024-07-01,2024-08-01]",
    )
    local = encode_data({**cfg, "cache": {"enabled": False}})
    assert len(np.unique(local.train.seqs.weight)) > 1  # customers with 1, 2 and 3 rows
    assert_prepared_alike(local, prepare_on_ray(cfg, {}, part_events=8_000))


@pytest.mark.slow
def test_explicit_labels_activity_events_and_visits_prepare_as_one_machine_does(
    dataset: Path, cluster: None, tmp_path: Path
) -> None:
    """Labels from a file (read whole by the driver), time-to-event targets on purchases only, and steps
    that are visits within 60 days."""
    ids = pd.read_parquet(dataset / "src" / "customers.parquet")["customer_id"].astype(str)
    cutoffs = ["2024-07-01", "2024-08-01", "2024-10-15"]
    labels = pd.DataFrame(
        [
            (c, pd.Timestamp(cut), float(zlib.crc32(f"{c}{cut}".encode()) % 3 == 0))
            for c in ids[::2]
            for cut in cutoffs
        ],
        columns=["customer_id", "cutoff", "churned"],
    )
    labels.to_parquet(tmp_path / "labels.parquet")
    cfg = data_config(
        dataset,
        tmp_path / "cache",
        f"data.labels_path={tmp_path / 'labels.parquet'}",
        "data.train_cutoffs=[2024-07-01,2024-08-01]",
        "data.label_events=\"event_type == 'purchase'\"",
        "data.visits.gap_minutes=720",
        "data.max_span_days=60",
    )
    local = encode_data({**cfg, "cache": {"enabled": False}})
    assert len(local.train) < 2 * len(ids)  # only the labelled half of the customers
    assert_prepared_alike(local, prepare_on_ray(cfg, {}, part_events=8_000))


def _rows(data: ChurnData, split: str) -> dict:
    """Each row's label, encoded events and aggregates, keyed by (customer, cutoff)."""
    s = getattr(data, split)
    out = {}
    for i, key in enumerate(zip(s.seqs.customer_id, s.seqs.cutoff, strict=True)):
        lo, hi = s.seqs.offsets[i], s.seqs.offsets[i + 1]
        out[key] = (s.seqs.label[i], s.seqs.cat[lo:hi], s.seqs.num[lo:hi], s.aggregates.values[i])
    return out


@pytest.mark.slow
def test_no_leakage_on_the_cluster_either(cluster: None, tmp_path: Path) -> None:
    """tests/data/test_leakage.py over the distributed path: events changed and added after the last
    training cutoff change no training row's label, encoding or aggregate, nor the fitted statistics (to
    rounding: the parts differ, so their sums are added in another order)."""
    events = make_events(n_customers=60, seed=5)
    built = {}
    for name, frame in (
        ("clean", events),
        ("tampered", tamper_from(events, LEAKAGE_TRAIN_CUTOFFS[-1], add_at_cutoff=False)),
    ):
        path = tmp_path / f"{name}.parquet"
        frame.to_parquet(path)
        cfg = {**leakage_cfg(path), "cache": {"enabled": True, "dir": str(tmp_path / "cache")}}
        built[name] = prepare_on_ray(cfg, {}, part_events=300)
    clean, tampered = built["clean"], built["tampered"]
    assert clean.encoder.state()["vocabs"] == tampered.encoder.state()["vocabs"]
    assert_allclose(clean.encoder.numeric.mean, tampered.encoder.numeric.mean, rtol=1e-12)
    assert clean.featurizer.mix_categories == tampered.featurizer.mix_categories
    assert_allclose(list(clean.featurizer.fill.values()), list(tampered.featurizer.fill.values()), rtol=1e-12)
    for split in ("train", "val"):
        a, b = _rows(clean, split), _rows(tampered, split)
        assert a.keys() == b.keys() and len(a) > 20
        for key, (label, cat, num, agg) in a.items():
            assert label == b[key][0]
            assert_array_equal(cat, b[key][1])
            assert_allclose(num, b[key][2], rtol=1e-6, atol=1e-6)
            assert_allclose(agg, b[key][3], rtol=1e-6, atol=1e-6)
    # the tampered test period's unseen category encodes as OOV: the comparison above is not vacuous
    assert 1 in set(tampered.test.seqs.cat[:, tampered.encoder.cat_names.index("cat")].tolist())


@pytest.mark.slow
def test_bad_data_and_a_plan_the_data_cannot_meet_are_one_line(
    dataset: Path, cluster: None, tmp_path: Path
) -> None:
    cases = {"data.policy=fail": "e.g. row 5000:", "data.test_cutoff=2025-06-01": "runs past the data's end"}
    for override, says in cases.items():
        cfg = data_config(dataset, tmp_path / "cache", override)
        with pytest.raises((DataValidationError, ConfigError)) as local:
            encode_data({**cfg, "cache": {"enabled": False}})
        with pytest.raises(type(local.value)) as caught:
            prepare_on_ray(cfg, {}, part_events=8_000)
        assert str(caught.value) == str(local.value)  # the same line one machine says
        assert "\n" not in str(caught.value) and says in str(caught.value)
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]  # nothing stored


def test_the_cluster_needs_the_cache_to_write_into(tmp_path: Path) -> None:
    make_events(n_customers=5).to_parquet(tmp_path / "e.parquet")
    with pytest.raises(
        ConfigError, match=r"^engine=ray writes the prepared data into the encoded-snapshot cache"
    ):
        prepare_on_ray({**leakage_cfg(tmp_path / "e.parquet"), "cache": {"enabled": False}})


@pytest.mark.slow
def test_the_command_prepares_on_its_own_local_cluster(dataset: Path, tmp_path: Path) -> None:
    """`churnwatch prepare engine=ray` end to end, in its own process and its own local cluster."""
    args = [
        "engine=ray",
        "ray.workers=1",
        "part_events=8000",
        f"data.events_path={dataset / 'events'}",
        f"data.customers_path={dataset / 'customers'}",
        "data.generate=null",
        f"data.cache.dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "churnwatch", "prepare", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "validation" in proc.stdout and (tmp_path / "run" / "data_report.json").is_file()
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 1


@pytest.mark.slow
def test_inputs_at_urls_prepare_as_their_local_files(dataset: Path, cluster: None, tmp_path: Path) -> None:
    """Events and customers at URLs (here `file://`: the workers are other processes, so fsspec's in-memory
    store would not do), read in place by the workers: the local files' encoding, their reports naming the
    URLs."""
    cfg = data_config(dataset, tmp_path / "cache")
    urls = {f"{role}_path": f"file://{dataset / role}" for role in ("events", "customers")}
    local = encode_data({**cfg, "cache": {"enabled": False}})
    dist = prepare_on_ray({**cfg, **urls}, {}, part_events=4_000)
    assert [r.path for r in dist.reports] == list(urls.values())
    assert_prepared_alike(
        local,
        replace(dist, reports=[replace(r, path=str(r.path).removeprefix("file://")) for r in dist.reports]),
    )
