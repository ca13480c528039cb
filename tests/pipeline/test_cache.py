"""The encoded-snapshot cache: a hit is the fresh build exactly, a stale or damaged entry is never trusted."""

from __future__ import annotations

import ast
import json
import logging
import multiprocessing
import os
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import churnwatch
from churnwatch.config.compose import compose
from churnwatch.data.snapshots import build_snapshots
from churnwatch.features.aggregates import AggregateFeaturizer
from churnwatch.features.encode import EncodedSequences, SequenceEncoder
from churnwatch.pipeline import cache as cache_mod
from churnwatch.pipeline import cache_key
from churnwatch.pipeline.batch import SequenceDataset
from churnwatch.pipeline.build import build_data
from churnwatch.pipeline.cache import EncodedCache
from churnwatch.pipeline.cache_key import CODE_MODULES, content_digest
from churnwatch.pipeline.dataset import ChurnData, encode_data
from tests.helpers import leakage_cfg, make_events

SNAP_FIELDS = ("customer", "cutoff", "start", "end", "label")
SEQ_FIELDS = ("offsets", "cat", "num", "static_cat", "static_num", "label", "customer_id", "cutoff")


def _customers(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "cid": [f"u{c:03d}" for c in range(n)],
            "region": rng.choice(["north", "south", None], n),
            "signup": pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 400, n), unit="D"),
        }
    )


def _write(tmp_path: Path, seed: int = 4, n: int = 60, suffix: str = "parquet") -> Path:
    path = tmp_path / f"events.{suffix}"
    events = make_events(n_customers=n, seed=seed)
    if suffix == "csv":
        events.to_csv(path, index=False)
    else:
        events.to_parquet(path)
    _customers().to_parquet(tmp_path / "customers.parquet")
    return path


def _cfg(path: Path, cache_dir: Path, **cache: object) -> dict:
    return {
        **leakage_cfg(path),
        "customers_path": str(path.parent / "customers.parquet"),
        "customers": {"categorical": ["region"], "numeric": [], "dates": ["signup"]},
        "batch_size": 16,
        "cache": {"enabled": True, "dir": str(cache_dir), **cache},
    }


def _assert_same(a: ChurnData, b: ChurnData) -> None:
    """Every array, label, frame and fitted state equal (np.array_equal, dtype included)."""
    for name in ("train", "val", "test"):
        sa, sb = getattr(a, name), getattr(b, name)
        for f in SNAP_FIELDS:
            x, y = getattr(sa.snaps, f), getattr(sb.snaps, f)
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=f == "label"), (name, f)
        for f in SEQ_FIELDS:
            x, y = getattr(sa.seqs, f), getattr(sb.seqs, f)
            assert x.dtype == y.dtype and np.array_equal(x, y), (name, f)
        assert np.array_equal(sa.aggregates.values, sb.aggregates.values), name
        assert sa.aggregates.names == sb.aggregates.names
        assert sa.aggregates.categorical == sb.aggregates.categorical
    assert a.encoder.state() == b.encoder.state()
    assert a.featurizer.state() == b.featurizer.state()
    assert [r.as_dict() for r in a.reports] == [r.as_dict() for r in b.reports]
    pd.testing.assert_frame_equal(a.log.frame, b.log.frame)
    pd.testing.assert_frame_equal(a.customers, b.customers)
    assert np.array_equal(a.log.customer_ids, b.log.customer_ids)
    assert np.array_equal(a.log.offsets, b.log.offsets)
    assert a.plan == b.plan and a.summary() == b.summary()


def _entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _uncached(cfg: dict) -> ChurnData:
    return encode_data({k: v for k, v in cfg.items() if k != "cache"})


def test_hit_reproduces_a_fresh_build_memory_mapped(tmp_path, caplog):
    cfg = _cfg(_write(tmp_path), tmp_path / "cache")
    fresh = _uncached(cfg)
    with caplog.at_level(logging.INFO, logger="churnwatch.pipeline.cache"):
        miss = build_data(cfg)
        hit = build_data(cfg)
    assert "encoded cache miss (no entry for these inputs yet)" in caplog.text
    assert f"encoded cache hit {tmp_path / 'cache'}" in caplog.text
    _assert_same(fresh, miss)
    _assert_same(fresh, hit)
    assert isinstance(hit.train.seqs.cat, np.memmap) and not hit.train.seqs.cat.flags.writeable
    assert len(_entries(tmp_path / "cache")) == 1
    assert not list((tmp_path / "cache").glob(".tmp-*"))


def test_a_hit_reads_no_raw_file_and_encodes_nothing(tmp_path, monkeypatch, caplog):
    """The events file cannot simply be deleted (its content hash is part of the key, so that is a miss);
    instead the parquet reader is made to fail and every call is traced: no load, snapshot or encode runs."""
    cfg = _cfg(_write(tmp_path), tmp_path / "cache")
    first = build_data(cfg)

    def unreadable(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cache hit read a raw input file")

    monkeypatch.setattr(pq, "read_table", unreadable)
    watched = {
        f.__code__
        for f in (
            SequenceEncoder.fit,
            SequenceEncoder.transform,
            AggregateFeaturizer.fit,
            AggregateFeaturizer.transform,
            build_snapshots,
            encode_data,
        )
    }
    called = set()
    sys.setprofile(
        lambda frame, event, arg: event == "call" and frame.f_code in watched and called.add(frame.f_code)
    )
    try:
        with caplog.at_level(logging.INFO, logger="churnwatch.pipeline.cache"):
            second = build_data(cfg)
    finally:
        sys.setprofile(None)
    assert called == set() and "encoded cache hit" in caplog.text
    _assert_same(first, second)


def test_an_edited_events_file_is_a_miss_and_the_new_data_is_used(tmp_path, caplog):
    path = _write(tmp_path, seed=4)
    cfg = _cfg(path, tmp_path / "cache")
    old = build_data(cfg)
    make_events(n_customers=60, seed=5).to_parquet(path)
    with caplog.at_level(logging.INFO, logger="churnwatch.pipeline.cache"):
        new = build_data(cfg)
    assert "encoded cache miss (events file changed (size, mtime_ns, content))" in caplog.text
    _assert_same(_uncached(cfg), new)
    assert not np.array_equal(old.train.seqs.num, new.train.seqs.num)


def test_same_size_and_mtime_but_new_content_is_a_miss(tmp_path, caplog):
    """Only the content hash can tell: one event kind renamed in place, size and mtime restored."""
    path = _write(tmp_path, suffix="csv")
    cfg = _cfg(path, tmp_path / "cache")
    build_data(cfg)
    stat = path.stat()
    path.write_text(path.read_text().replace("complaint", "complaimt"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    with caplog.at_level(logging.INFO, logger="churnwatch.pipeline.cache"):
        new = build_data(cfg)
    assert "events file changed (content)" in caplog.text
    assert "complaimt" in new.encoder.vocabs["kind"].tokens
    _assert_same(_uncached(cfg), new)


def test_a_changed_encoding_key_is_a_miss_but_loader_keys_are_not(tmp_path, caplog):
    path = _write(tmp_path)
    cfg = _cfg(path, tmp_path / "cache")
    build_data(cfg)
    for key, value in (("max_len", 5), ("horizon_days", 20)):
        changed = {**cfg, key: value}
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="churnwatch.pipeline.cache"):
            data = build_data(changed)
        assert f"encoded cache miss (data config changed: {key} " in caplog.text
        _assert_same(_uncached(changed), data)
    assert build_data({**cfg, "max_len": 5}).encoder.max_len == 5
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="churnwatch.pipeline.cache"):
        build_data({**cfg, "batch_size": 7, "num_workers": 2, "eval_batch_size": 3, "use_aggregates": True})
    assert "encoded cache hit" in caplog.text and "miss" not in caplog.text
    assert len(_entries(tmp_path / "cache")) == 3


def test_another_format_version_is_a_miss(tmp_path, monkeypatch, caplog):
    cfg = _cfg(_write(tmp_path), tmp_path / "cache")
    build_data(cfg)
    monkeypatch.setattr(cache_key, "FORMAT_VERSION", cache_key.FORMAT_VERSION + 1)
    with caplog.at_level(logging.INFO, logger="churnwatch.pipeline.cache"):
        build_data(cfg)
    assert "miss (cache format or churnwatch version changed)" in caplog.text
    assert len(_entries(tmp_path / "cache")) == 2


def _truncate(entry: Path) -> None:
    path = entry / "train.seqs.cat.npy"
    path.write_bytes(path.read_bytes()[:-40])


def _drop(entry: Path) -> None:
    (entry / "events.arrow").unlink()


def _bad_manifest(entry: Path) -> None:
    (entry / "manifest.json").write_text('{"format": 1, "key": ')


def _no_manifest(entry: Path) -> None:
    (entry / "manifest.json").unlink()


def _wrong_shape(entry: Path) -> None:
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["arrays"]["val.aggregates"]["shape"][1] += 1
    (entry / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", [_truncate, _drop, _bad_manifest, _no_manifest, _wrong_shape])
def test_a_damaged_entry_is_logged_and_rebuilt(tmp_path, caplog, damage):
    cfg = _cfg(_write(tmp_path), tmp_path / "cache")
    build_data(cfg)
    (entry,) = _entries(tmp_path / "cache")
    damage(entry)
    with caplog.at_level(logging.INFO, logger="churnwatch.pipeline.cache"):
        rebuilt = build_data(cfg)
    assert f"encoded cache entry {entry} is unusable" in caplog.text
    assert "miss (corrupt entry:" in caplog.text
    _assert_same(_uncached(cfg), rebuilt)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="churnwatch.pipeline.cache"):
        build_data(cfg)
    assert "encoded cache hit" in caplog.text and _entries(tmp_path / "cache") == [entry]


def test_verify_catches_a_flipped_byte_that_sizes_cannot(tmp_path, caplog):
    cfg = _cfg(_write(tmp_path), tmp_path / "cache", verify=True)
    build_data({**cfg, "cache": {**cfg["cache"], "verify": False}})  # an entry without digests...
    with caplog.at_level(logging.INFO, logger="churnwatch.pipeline.cache"):
        build_data(cfg)  # ...is rebuilt once with them when verify is turned on
    assert "has no digest" in caplog.text
    caplog.clear()
    (entry,) = _entries(tmp_path / "cache")
    path = entry / "train.seqs.num.npy"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.INFO, logger="churnwatch.pipeline.cache"):
        rebuilt = build_data(cfg)
    assert "does not match its BLAKE2b digest" in caplog.text
    _assert_same(_uncached(cfg), rebuilt)


def test_rows_dropped_as_future_with_no_end_date_are_never_reused(tmp_path, caplog):
    """With data.end_date null, "future" means after the build's now: a later run may keep those rows."""
    events = make_events(n_customers=60, seed=4)
    late = events.iloc[[0]].assign(ts=pd.Timestamp("2099-01-01"))
    path = tmp_path / "events.parquet"
    pd.concat([events, late]).to_parquet(path)
    _customers().to_parquet(tmp_path / "customers.parquet")
    cfg = {**_cfg(path, tmp_path / "cache"), "end_date": None}
    build_data(cfg)
    with caplog.at_level(logging.INFO, logger="churnwatch.pipeline.cache"):
        build_data(cfg)
    assert "end_date=null" in caplog.text and "encoded cache hit" not in caplog.text


def _build_in_child(cfg: dict, queue: multiprocessing.Queue) -> None:
    data = build_data(cfg)
    queue.put(content_digest_of(data))


def content_digest_of(data: ChurnData) -> str:
    import hashlib

    h = hashlib.blake2b()
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        for f in ("offsets", "cat", "num", "static_cat", "static_num", "label"):
            h.update(np.ascontiguousarray(getattr(split.seqs, f)).tobytes())
        h.update(np.ascontiguousarray(split.aggregates.values).tobytes())
    return h.hexdigest()


def test_concurrent_builders_of_one_key_share_one_entry(tmp_path):
    cfg = _cfg(_write(tmp_path), tmp_path / "cache")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(cfg, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    digests = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(set(digests)) == 1 and digests[0] == content_digest_of(_uncached(cfg))
    assert len(_entries(tmp_path / "cache")) == 1
    assert not list((tmp_path / "cache").glob(".tmp-*"))


def test_losing_a_commit_race_keeps_the_winners_entry(tmp_path):
    """Where file locks do not work, two builders can both finish: the second keeps the first's entry."""
    cfg = _cfg(_write(tmp_path), tmp_path / "cache")
    build_data(cfg)
    (entry,) = _entries(tmp_path / "cache")
    manifest = (entry / "manifest.json").read_bytes()
    cache = EncodedCache.from_config(cfg)
    # the entry already exists
    data = cache._build_and_store(lambda writer: encode_data(cfg, writer.allocator))
    assert (entry / "manifest.json").read_bytes() == manifest
    assert not list((tmp_path / "cache").glob(".tmp-*"))
    _assert_same(_uncached(cfg), data)


def test_least_recently_used_entries_beyond_max_entries_are_removed(tmp_path):
    path = _write(tmp_path)
    cfg = _cfg(path, tmp_path / "cache", max_entries=2)
    for max_len in (4, 5, 6):
        build_data({**cfg, "max_len": max_len})
    assert len(_entries(tmp_path / "cache")) == 3  # all used within the grace period: none deleted yet
    hours_ago = time.time() - 2 * cache_mod.PRUNE_GRACE_S
    for age, entry in enumerate(_entries(tmp_path / "cache")):
        os.utime(entry / "manifest.json", (hours_ago - age, hours_ago - age))
    build_data({**cfg, "max_len": 4})  # a hit on the oldest one makes it the most recent
    build_data({**cfg, "max_len": 7})  # a new entry: the two least recently used go
    kept = _entries(tmp_path / "cache")
    assert {json.loads((e / "key.json").read_text())["config"]["max_len"] for e in kept} == {4, 7}


def test_a_worker_gets_the_memory_maps_by_reference(tmp_path):
    """DataLoader workers under spawn/forkserver unpickle the dataset: it must reopen the files, not carry
    their bytes."""
    cfg = _cfg(_write(tmp_path), tmp_path / "cache")
    build_data(cfg)
    data = build_data(cfg)
    seqs = data.train.seqs
    aggregates = data.featurizer.scale(data.train.aggregates)
    dataset = SequenceDataset(seqs, aggregates)
    blob = pickle.dumps(dataset)
    copy = pickle.loads(blob)
    assert isinstance(copy.seqs.cat, np.memmap) and copy.seqs.cat.filename == seqs.cat.filename
    in_memory = SequenceDataset(
        EncodedSequences(**{k: np.array(v) for k, v in vars(seqs).items()}), aggregates
    )
    assert len(pickle.dumps(in_memory)) - len(blob) > 0.9 * (seqs.cat.nbytes + seqs.num.nbytes)
    rows = np.arange(0, len(seqs), 3)
    a, b = dataset[rows], copy[rows]
    for field in ("cat", "num", "lengths", "static_cat", "static_num", "aggregates", "label", "index"):
        assert np.array_equal(getattr(a, field).numpy(), getattr(b, field).numpy()), field


def test_a_hit_pickles(tmp_path):
    """A hit's ChurnData (e.g. inside a datamodule sent to a spawned process) pickles, its event log
    still unconverted, and comes back whole."""
    cfg = _cfg(_write(tmp_path), tmp_path / "cache")
    build_data(cfg)
    copy = pickle.loads(pickle.dumps(build_data(cfg)))
    _assert_same(_uncached(cfg), copy)


def test_composed_configs_cache_into_the_test_tmp_dir(encoded_cache_dir):
    cfg = compose("prepare")
    assert cfg.data.cache.enabled and Path(cfg.data.cache.dir) == encoded_cache_dir / "encoded"


def test_sampled_content_hash_reads_head_tail_and_spread_blocks(tmp_path):
    """The trade-off of content_hash=sampled: an in-place edit between the sampled blocks that keeps size and
    mtime goes unnoticed; `full` sees every byte."""
    path = tmp_path / "big.bin"
    data = bytearray(np.random.default_rng(0).bytes(20 << 20))
    path.write_bytes(bytes(data))
    full, sampled = content_digest(path, "full"), content_digest(path, "sampled")
    head, tail, first_spread, between = 10, len(data) - 10, cache_key.BLOCK + 100, 9 << 20
    for pos, sampled_sees_it in ((head, True), (tail, True), (first_spread, True), (between, False)):
        changed = bytearray(data)
        changed[pos] ^= 0xFF
        path.write_bytes(bytes(changed))
        assert content_digest(path, "full") != full
        assert (content_digest(path, "sampled") != sampled) is sampled_sees_it, pos


def test_datamodule_serves_the_same_batches_from_the_cache_in_spawned_workers(tmp_path):
    """Batches from memory-mapped arrays, in a worker that got the dataset pickled (spawn), equal the
    in-memory batches of an uncached build."""
    from churnwatch.pipeline.datamodule import ChurnDataModule

    cfg = {**_cfg(_write(tmp_path), tmp_path / "cache"), "use_aggregates": True}
    build_data(cfg)
    cached = ChurnDataModule({**cfg, "num_workers": 1})
    cached.setup("fit")
    plain = ChurnDataModule({k: v for k, v in cfg.items() if k != "cache"})
    plain.setup("fit")
    assert isinstance(cached.data.train.seqs.num, np.memmap)
    loader = cached.train_dataloader()
    loader.multiprocessing_context = "spawn"
    batches = list(loader)
    expected = list(plain.train_dataloader())
    assert len(batches) == len(expected) > 1
    for a, b in zip(batches, expected, strict=True):
        for field in ("cat", "num", "lengths", "static_cat", "static_num", "aggregates", "label", "index"):
            assert np.array_equal(getattr(a, field).numpy(), getattr(b, field).numpy()), field


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split(".")[1:])
    root = Path(churnwatch.__file__).parent
    return next((f for f in (root / rel.with_suffix(".py"), root / rel / "__init__.py") if f.is_file()), None)


def _imported_at_load(name: str) -> set[str]:
    """The churnwatch modules `name` imports at module level (`from a import b` is a.b when b is a module)."""
    found = set()
    for node in ast.parse(_module_file(name).read_text()).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("churnwatch"):
            found.update(
                f"{node.module}.{a.name}" if _module_file(f"{node.module}.{a.name}") else node.module
                for a in node.names
            )
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("churnwatch"))
    return found


DATA_PATH_PACKAGES = ("churnwatch.data.", "churnwatch.features.", "churnwatch.pipeline.")


def test_code_modules_cover_the_data_path():
    """Every data, features and pipeline module that the build and the entry reader import is in
    CODE_MODULES (a module split off without being listed would let its edits reuse stale entries), and
    every listed module exists (a stale name would silently drop out of the fingerprint)."""
    todo, reached = ["churnwatch.pipeline.dataset", "churnwatch.pipeline.cache_entry"], set()
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(m for m in _imported_at_load(name) if m.startswith(DATA_PATH_PACKAGES))
    assert reached - set(CODE_MODULES) == set()
    assert [m for m in CODE_MODULES if _module_file(m) is None] == []


def test_a_dataset_directory_is_an_input_whose_files_are_its_identity(tmp_path, caplog):
    """Events as a directory of parquet files (hive partitions): one machine reads it as the files in path
    order, the entry is found again, and a file rewritten inside it is a miss."""
    events = make_events(n_customers=60, seed=4)
    _write(tmp_path)  # the customers file
    root = tmp_path / "events"
    halves = {1: events.iloc[: len(events) // 2], 2: events.iloc[len(events) // 2 :]}
    for month, half in halves.items():
        (root / f"month={month}").mkdir(parents=True)
        half.to_parquet(root / f"month={month}" / "part-0.parquet")
    (root / "_SUCCESS").write_text("")  # a marker file Arrow skips: not data, not identity
    cfg = _cfg(root, tmp_path / "cache")
    whole = tmp_path / "whole.parquet"
    pd.concat([h.assign(month=np.int32(m)) for m, h in halves.items()]).to_parquet(whole)
    with caplog.at_level(logging.INFO, logger="churnwatch.pipeline.cache"):
        first = build_data(cfg)
        again = build_data(cfg)
    assert f"encoded cache hit {tmp_path / 'cache'}" in caplog.text
    from_file = _uncached({**cfg, "events_path": str(whole)})
    for name in ("train", "val", "test"):
        assert np.array_equal(getattr(first, name).seqs.num, getattr(from_file, name).seqs.num)
    assert first.reports[0].rows_read == len(events)
    _assert_same(first, again)
    halves[2].assign(amount=halves[2]["amount"] * 2).to_parquet(root / "month=2" / "part-0.parquet")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="churnwatch.pipeline.cache"):
        changed = build_data(cfg)
    assert "events file changed" in caplog.text
    assert not np.array_equal(changed.train.seqs.num, first.train.seqs.num)


def test_inputs_at_urls_build_what_their_local_files_build_and_key_the_entry(tmp_path, caplog):
    """Events (a parquet directory) and customers at a URL (fsspec's in-memory store): read in place, the
    same build as the local files, the same content digests in the key, found again; a rewritten object
    is a miss."""
    fs = fsspec.filesystem("memory")
    events = make_events(n_customers=60, seed=4)
    _write(tmp_path)
    root, url = tmp_path / "events", f"memory://{tmp_path.name}"
    for month, half in enumerate((events.iloc[: len(events) // 2], events.iloc[len(events) // 2 :]), start=1):
        (root / f"month={month}").mkdir(parents=True)
        half.to_parquet(root / f"month={month}" / "part-0.parquet")
    fs.put(str(root), f"/{tmp_path.name}/events", recursive=True)
    fs.put_file(str(tmp_path / "customers.parquet"), f"/{tmp_path.name}/customers.parquet")
    local = _cfg(root, tmp_path / "cache")
    remote = {**local, "events_path": f"{url}/events", "customers_path": f"{url}/customers.parquet"}
    with caplog.at_level(logging.INFO, logger="churnwatch.pipeline.cache"):
        built = build_data(remote)
        again = build_data(remote)
    assert f"encoded cache hit {tmp_path / 'cache'}" in caplog.text
    _assert_same(built, again)
    fresh = _uncached(local)  # everything but the reports' paths
    assert [{**r.as_dict(), "path": None} for r in built.reports] == [
        {**r.as_dict(), "path": None} for r in fresh.reports
    ]
    _assert_same(built, replace(fresh, reports=built.reports))
    for role in ("events", "customers"):
        here, there = (cache_key.key_parts(c)["inputs"][role] for c in (local, remote))
        assert there["path"].startswith(url) and (there["size"], there["content"]) == (
            here["size"],
            here["content"],
        )
    fs.pipe_file(f"/{tmp_path.name}/customers.parquet", _customers(50).to_parquet())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="churnwatch.pipeline.cache"):
        build_data(remote)
    assert "customers file changed" in caplog.text


def test_a_hit_log_converts_only_the_columns_and_rows_asked_for(tmp_path):
    """The entry's events stay a memory-mapped table: the log's arrays come from it, and `select` converts
    only what it is asked for (the drivers' owners read a few columns of some rows, offers a few columns),
    equal to the fresh build's frame; the whole frame only when `frame` itself is read."""
    cfg = _cfg(_write(tmp_path), tmp_path / "cache")
    fresh = _uncached(cfg).log
    log = build_data(cfg).log
    for name in ("customer_ids", "customer", "ts", "offsets"):
        want, got = getattr(fresh, name), getattr(log, name)
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    rows, columns = np.array([len(fresh) - 1, 0, 17, 17]), ["kind", "amount", "customer_id"]
    expected = fresh.frame[columns].iloc[rows].reset_index(drop=True)
    pd.testing.assert_frame_equal(log.select(columns, rows), expected)
    pd.testing.assert_frame_equal(
        log.select(["customer_id", "timestamp"]), fresh.frame[["customer_id", "timestamp"]]
    )
    assert log.columns == list(fresh.frame.columns) and "frame" not in vars(log)  # nothing converted whole
    pd.testing.assert_frame_equal(
        log.select(["amount", "no_such_column"]), fresh.frame
    )  # all: the caller names it
    pd.testing.assert_frame_equal(log.frame, fresh.frame)
