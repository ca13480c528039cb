"""The scoring service, started for real on a free localhost port and called over HTTP: it answers what
batch scoring writes, refuses bad requests with a 4xx in one line, loses nothing in a concurrent burst, and
swaps in a new model file without dropping a request (a corrupt one is refused, the old model serves on)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uvicorn
import yaml

from churnwatch.config.schema import LimitsConfig, ServeConfig
from churnwatch.scoring.output import OUTPUT_COLUMNS
from churnwatch.scoring.scorer import Scorer
from churnwatch.serving.app import create_app
from tests.helpers import REPO, rewrite_model, score_model_data

AS_OF = "2024-11-01"
DRIVERS = {"steps": 2}
PLAYBOOK = yaml.safe_load((REPO / "conf" / "playbook" / "default.yaml").read_text())
PER_REQUEST = ("risk_tier", "risk_rank", "percentile", "action")  # a request is ranked as its own population
COMPARED = tuple(
    c for c in OUTPUT_COLUMNS if c not in (*PER_REQUEST, "customer_id", "churn_probability", "as_of")
)
"""What a request's rows share with the batch run's (the probability is compared to 1e-6)."""


@contextmanager
def running(config: ServeConfig) -> Iterator[tuple[str, Any]]:
    """The app served by uvicorn in a thread on a socket bound before it starts (connections wait in its
    backlog, so nothing polls for readiness); yields the base URL and the app."""
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    sock = server.config.bind_socket()
    sock.listen(server.config.backlog)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


def serve_config(model_path: Path | str, reload_seconds: float = 0, **extra: Any) -> ServeConfig:
    return ServeConfig(
        model_path=str(model_path),
        device="cpu",
        drivers=DRIVERS,
        playbook=PLAYBOOK,
        reload_seconds=reload_seconds,
        **extra,
    )


def rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A table as the JSON rows a client sends (times as ISO text)."""
    return json.loads(frame.to_json(orient="records", date_format="iso"))


@pytest.fixture(scope="module")
def data(model: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    folder = model.parent.parent / "data"
    return pd.read_parquet(folder / "events.parquet"), pd.read_parquet(folder / "customers.parquet")


@pytest.fixture(scope="module")
def batch(model: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """What `churnwatch score` writes for the tiny model's customers at AS_OF."""
    out = tmp_path_factory.mktemp("batch") / "scores.parquet"
    return score_model_data(model, out, AS_OF, drivers=DRIVERS, playbook=PLAYBOOK).set_index("customer_id")


@pytest.fixture(scope="module")
def served(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """One service for the module's read-only tests, over a copy of the model (small limits to test)."""
    path = tmp_path_factory.mktemp("served") / "model.pt"
    shutil.copy(model, path)
    limits = LimitsConfig(max_body_mb=1.0, max_rows=20_000, max_customers=1_000)
    with running(serve_config(path, limits=limits)) as found:
        yield found


def customers_of(events: pd.DataFrame, customers: pd.DataFrame, ids: list[str]) -> dict[str, Any]:
    return {
        "events": rows(events[events["customer_id"].isin(ids)]),
        "customers": rows(customers[customers["customer_id"].isin(ids)]),
        "as_of": AS_OF,
    }


def test_the_service_answers_what_batch_scoring_writes(
    served: tuple[str, Any], data: tuple[pd.DataFrame, pd.DataFrame], batch: pd.DataFrame
) -> None:
    url, app = served
    events, customers = data
    ids = sorted(events["customer_id"].astype(str).unique())
    groups = [ids[i : i + 7] for i in range(0, len(ids), 7)]
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda g: client.post(f"{url}/v1/score", json=customers_of(events, customers, g)), groups
            )
        )
        arrow = io.BytesIO()
        sub = events[events["customer_id"].isin(ids[:20])]
        with pa.ipc.new_stream(arrow, pa.Schema.from_pandas(sub, preserve_index=False)) as writer:
            writer.write_table(pa.Table.from_pandas(sub, preserve_index=False))
        bulk = client.post(
            f"{url}/v1/score",
            params={"as_of": AS_OF},
            content=arrow.getvalue(),
            headers={
                "content-type": "application/vnd.apache.arrow.stream",
                "accept": "application/vnd.apache.parquet",
            },
        )
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    got = pd.concat([pd.DataFrame(a.json()["scores"]) for a in answers]).set_index("customer_id")
    assert sorted(got.index) == sorted(batch.index)  # every customer exactly once
    want = batch.loc[got.index]
    np.testing.assert_allclose(got["churn_probability"], want["churn_probability"], rtol=0, atol=1e-6)
    got["last_event_at"] = pd.to_datetime(got["last_event_at"])
    for col in COMPARED:
        left, right = got[col], want[col]
        if col in ("recent_spend", "value_at_risk", "expected_purchases", "expected_spend"):
            np.testing.assert_allclose(left.astype(float), right.astype(float), rtol=1e-6, atol=1e-6)
        else:
            assert (left.fillna(-1).astype(str) == right.fillna(-1).astype(str)).all(), col
    # tiers by the model's probability cut-offs, ranks within each request
    cuts = httpx.get(f"{url}/v1/model").json()["thresholds"]
    ranked = got[got["risk_rank"].notna()]
    expect = np.where(
        ranked["churn_probability"] >= cuts["high_probability"],
        "high",
        np.where(ranked["churn_probability"] >= cuts["medium_probability"], "medium", "low"),
    )
    assert (ranked["risk_tier"] == expect).all()
    for a in answers:
        scores = pd.DataFrame(a.json()["scores"])
        ranks = scores["risk_rank"].dropna().astype(int)
        assert sorted(ranks) == list(range(1, len(ranks) + 1))
    # the bulk route: Arrow in, parquet out (no attributes: the JSON answer would warn)
    assert bulk.status_code == 200, bulk.text
    table = pq.read_table(io.BytesIO(bulk.content)).to_pandas().set_index("customer_id")
    assert sorted(table.index) == ids[:20]
    assert bulk.headers["x-churnwatch-as-of"] == AS_OF
    assert bulk.headers["x-churnwatch-model"] == app.state.slot.current.sha256


def test_offers_come_with_the_actions_that_call_for_them(
    served: tuple[str, Any], data: tuple[pd.DataFrame, pd.DataFrame], batch: pd.DataFrame
) -> None:
    url, _ = served
    events, customers = data
    offer_columns = [c for c in batch.columns if c.startswith("offer_")]
    assert offer_columns, "the tiny model fits a recommender: its score file has offer columns"
    ids = list(batch.index[batch["offer_1"] != ""][:5])
    answer = httpx.post(f"{url}/v1/score", json=customers_of(events, customers, ids), timeout=60).json()
    assert "scores" in answer, answer
    got = pd.DataFrame(answer["scores"]).set_index("customer_id")
    # an offer follows the request's own action; where the action is the batch run's, so are the offers
    same = got["action"] == batch.loc[got.index, "action"]
    assert same.any()
    for col in offer_columns:
        assert (got.loc[same, col] == batch.loc[got.index[same], col]).all(), col


def test_a_request_can_leave_the_drivers_out(served: tuple[str, Any], data: tuple[pd.DataFrame, Any]) -> None:
    url, _ = served
    events, customers = data
    body = customers_of(events, customers, sorted(events["customer_id"].astype(str).unique())[:5])
    with_drivers = httpx.post(f"{url}/v1/score", json=body, timeout=60).json()["scores"]
    without = httpx.post(f"{url}/v1/score", json=body, params={"drivers": "false"}, timeout=60).json()[
        "scores"
    ]
    assert any(r["driver_1"] for r in with_drivers)
    assert not any(r["driver_1"] for r in without)
    assert [r["churn_probability"] for r in with_drivers] == [r["churn_probability"] for r in without]


def big_body() -> bytes:
    return json.dumps(
        {"events": [{"customer_id": "c", "timestamp": "2024-01-01", "pad": "x" * 2_000_000}]}
    ).encode()


BAD = [  # (content type, body, query, status, words the one-line error must contain)
    ("application/json", b"{not json", {}, 400, "not JSON"),
    ("application/json", b"[1, 2]", {}, 400, "JSON object"),
    ("application/json", b'{"events": [], "evnts": []}', {}, 400, "evnts"),
    ("application/json", b'{"customers": []}', {}, 400, "no 'events'"),
    ("application/json", b'{"events": [1]}', {}, 400, "events[0]"),
    ("application/json", b'{"events": {"customer_id": [1, 2], "timestamp": [1]}}', {}, 400, "one length"),
    ("application/json", b'{"events": []}', {}, 422, "no rows"),
    ("application/json", b'{"events": [{"timestamp": "2024-01-01"}]}', {}, 422, "customer_id"),
    ("application/json", b'{"events": [{"customer_id": "a"}], "as_of": "soon"}', {}, 422, "as_of"),
    ("application/json", b'{"events": [{"customer_id": "a"}]}', {"drivers": "maybe"}, 400, "drivers"),
    ("application/json", b'{"events": [{"customer_id": "a"}]}', {"asof": "2024-01-01"}, 400, "asof"),
    ("text/csv", b"customer_id\na", {}, 415, "text/csv"),
    ("application/vnd.apache.parquet", b"not parquet", {}, 400, "parquet"),
    ("application/vnd.apache.arrow.stream", b"not arrow", {}, 400, "arrow"),
    ("application/json", big_body(), {}, 413, "max_body_mb"),
]


@pytest.mark.parametrize(("kind", "body", "query", "status", "words"), BAD, ids=[b[4] for b in BAD])
def test_a_bad_request_gets_a_4xx_in_one_line(
    served: tuple[str, Any], kind: str, body: bytes, query: dict, status: int, words: str
) -> None:
    url, _ = served
    answer = httpx.post(
        f"{url}/v1/score", content=body, params=query, headers={"content-type": kind}, timeout=60
    )
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert "\n" not in error and "Traceback" not in error
    assert words.lower() in error.lower()


def test_invalid_rows_are_named_by_column_and_row(
    served: tuple[str, Any], data: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    url, _ = served
    events, _ = data
    one = rows(events[events["customer_id"] == events["customer_id"].iloc[0]].head(3))
    bad = [{**r, "timestamp": "not a time"} for r in one]
    answer = httpx.post(f"{url}/v1/score", json={"events": bad, "as_of": AS_OF}, timeout=60)
    assert answer.status_code == 422
    assert "timestamp" in answer.json()["error"] and "row 0" in answer.json()["error"]
    # some rows bad (the model's policy drops them): scored, and the answer says which and why
    mixed = httpx.post(f"{url}/v1/score", json={"events": [*one, bad[0]], "as_of": AS_OF}, timeout=60)
    assert mixed.status_code == 200
    report = mixed.json()["validation"]["events"]
    assert report["rows_read"] == 4 and report["rows_kept"] == 3
    assert "row 3" in report["examples"]["bad_timestamp"]


def test_too_many_rows_or_customers_are_refused_before_the_work(served: tuple[str, Any]) -> None:
    url, _ = served
    many = {"events": {"customer_id": [str(i) for i in range(1_001)], "timestamp": ["2024-01-01"] * 1_001}}
    answer = httpx.post(f"{url}/v1/score", json=many, timeout=60)
    assert answer.status_code == 413 and "limits.max_customers" in answer.json()["error"]
    rows_ = {"events": {"customer_id": ["a"] * 20_001, "timestamp": ["2024-01-01"] * 20_001}}
    answer = httpx.post(f"{url}/v1/score", json=rows_, timeout=60)
    assert answer.status_code == 413 and "limits.max_rows" in answer.json()["error"]


def test_a_concurrent_burst_loses_nothing_and_is_batched(
    served: tuple[str, Any], data: tuple[pd.DataFrame, pd.DataFrame], model: Path
) -> None:
    """64 requests at once, some about the same customer with different histories: each gets exactly its
    own customers, scored as if it came alone, and they shared passes through the model."""
    url, app = served
    events, customers = data
    ids = sorted(events["customer_id"].astype(str).unique())
    rng = np.random.default_rng(3)
    bodies = []
    for i in range(64):
        chosen = list(rng.choice(ids[:40], size=1 + i % 4, replace=False))
        sub = events[events["customer_id"].isin(chosen)]
        if i % 2:  # a shorter history of the same customers: another answer
            sub = sub.groupby("customer_id", observed=True).head(3 + i % 5)
        bodies.append({"events": rows(sub), "as_of": AS_OF, "drivers": False})
    batches_before = _metric(url, "churnwatch_batch_requests_count")
    start = threading.Barrier(16)

    def post(body: dict) -> httpx.Response:
        with httpx.Client(timeout=120) as client:
            if bodies.index(body) < 16:
                start.wait()
            return client.post(f"{url}/v1/score", json=body)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, bodies))
    assert [a.status_code for a in answers] == [200] * 64
    alone = Scorer(model, device="cpu", drivers={"enabled": False})
    for body, answer in zip(bodies, answers, strict=True):
        got = pd.DataFrame(answer.json()["scores"]).set_index("customer_id").sort_index()
        sent = pd.DataFrame(body["events"])
        want = alone.score(sent, as_of=AS_OF, progress=False).set_index("customer_id").sort_index()
        assert list(got.index) == list(want.index)
        np.testing.assert_allclose(got["churn_probability"], want["churn_probability"], atol=1e-6, rtol=0)
        assert (got["n_events"] == want["n_events"]).all()
    batches = _metric(url, "churnwatch_batch_requests_count") - batches_before
    assert batches < 64, "concurrent requests were scored in shared micro-batches"


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


def test_health_model_and_metrics(served: tuple[str, Any], model: Path) -> None:
    url, app = served
    health = httpx.get(f"{url}/healthz").json()
    assert health["status"] == "ok" and health["model_sha256"] == app.state.slot.current.sha256
    info = httpx.get(f"{url}/v1/model").json()
    assert info["contract"]["customer_id"] == "customer_id" and "auroc" in json.dumps(info["metrics"])
    assert 0 < info["thresholds"]["medium_probability"] <= info["thresholds"]["high_probability"] < 1
    httpx.post(f"{url}/v1/score", content=b"{", headers={"content-type": "application/json"})
    text = httpx.get(f"{url}/metrics").text
    assert 'churnwatch_requests_total{endpoint="/v1/score",status="400"}' in text
    assert 'churnwatch_request_errors_total{endpoint="/v1/score",status="400"}' in text
    assert f'churnwatch_model_info{{sha256="{health["model_sha256"]}"}} 1.0' in text
    assert "churnwatch_request_seconds_bucket" in text
    spec = httpx.get(f"{url}/openapi.json").json()  # what /docs shows
    body = spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]
    assert {
        "application/json",
        "application/vnd.apache.arrow.stream",
        "application/vnd.apache.parquet",
    } <= set(body)


def test_a_new_model_file_is_swapped_in_without_dropping_requests(
    model: Path, tmp_path: Path, data: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    path = tmp_path / "model.pt"
    shutil.copy(model, path)
    newer = rewrite_model(model, tmp_path / "newer.pt", meta=lambda m: m.update(threshold=0.123))
    events, _ = data
    body = {
        "events": rows(events[events["customer_id"].isin(events["customer_id"].unique()[:3])]),
        "as_of": AS_OF,
    }
    with running(serve_config(path)) as (url, app):
        old = app.state.slot.current.sha256
        stop = threading.Event()
        seen: list[httpx.Response] = []

        def keep_asking() -> None:
            with httpx.Client(timeout=120) as client:
                while not stop.is_set() or len(seen) < 10:
                    seen.append(client.post(f"{url}/v1/score", json=body, params={"drivers": "false"}))

        asker = threading.Thread(target=keep_asking)
        asker.start()
        os.replace(newer, path)  # what deploying a model is: an atomic rename onto the served path
        reloaded = httpx.post(f"{url}/v1/reload", timeout=120).json()
        stop.set()
        asker.join()
        assert reloaded["status"] == "reloaded"
        new = app.state.slot.current.sha256
        assert new != old and reloaded["sha256"] == new
        assert httpx.get(f"{url}/v1/model").json()["thresholds"]["threshold"] == pytest.approx(0.123)
        assert all(r.status_code == 200 for r in seen)
        assert {r.headers["x-churnwatch-model"] for r in seen} <= {old, new}
        # a corrupt file is refused; the model before it serves on
        broken = tmp_path / "broken.pt"
        broken.write_bytes(path.read_bytes()[:5000])
        os.replace(broken, path)
        refused = httpx.post(f"{url}/v1/reload", timeout=120)
        assert refused.status_code == 409 and refused.json()["sha256"] == new
        assert httpx.get(f"{url}/healthz").json()["refused"]
        after = httpx.post(f"{url}/v1/score", json=body, timeout=60)
        assert after.status_code == 200 and after.headers["x-churnwatch-model"] == new
        assert 'churnwatch_model_reloads_total{outcome="refused"} 1.0' in httpx.get(f"{url}/metrics").text


def test_the_watcher_notices_a_renamed_file_by_itself(model: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    shutil.copy(model, path)
    with running(serve_config(path, reload_seconds=0.05)) as (_, app):
        slot = app.state.slot
        newer = rewrite_model(model, tmp_path / "newer.pt", meta=lambda m: m.update(threshold=0.2))
        os.replace(newer, path)
        with slot.changed:
            assert slot.changed.wait_for(lambda: slot.reloads == 1, timeout=60)


def test_a_model_at_a_url_serves_and_reloads_when_its_object_is_replaced(model: Path, tmp_path: Path) -> None:
    """`model_path=s3://...` (here fsspec's in-memory store): served as the local file is, and an upload onto
    the URL (a new size, time or version tag) is loaded and checked like a renamed file; a bad or a missing
    object is refused and the old model serves on."""
    fs = fsspec.filesystem("memory")
    where = f"/{tmp_path.name}/models/model.pt"
    fs.pipe_file(where, model.read_bytes())
    with running(serve_config(f"memory:/{where}")) as (url, app):
        slot = app.state.slot
        first = httpx.get(f"{url}/v1/model").json()
        assert (
            first["path"] == f"memory:/{where}"
            and first["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
        )
        assert httpx.post(f"{url}/v1/reload", timeout=120).json()["status"] == "unchanged"
        newer = rewrite_model(model, tmp_path / "newer.pt", meta=lambda m: m.update(threshold=0.123))
        fs.pipe_file(where, newer.read_bytes())
        reloaded = httpx.post(f"{url}/v1/reload", timeout=120).json()
        assert (
            reloaded["status"] == "reloaded"
            and reloaded["sha256"] == hashlib.sha256(newer.read_bytes()).hexdigest()
        )
        assert httpx.get(f"{url}/v1/model").json()["thresholds"]["threshold"] == 0.123
        fs.pipe_file(where, b"not a model")
        refused = httpx.post(f"{url}/v1/reload", timeout=120)
        assert refused.status_code == 409 and "not a readable churnwatch model" in refused.json()["message"]
        fs.rm(where)
        gone = httpx.post(f"{url}/v1/reload", timeout=120)
        assert gone.status_code == 409 and gone.json()["message"].endswith(f"memory:/{where}: not found")
        assert slot.current.sha256 == reloaded["sha256"]  # the last good model serves on


def test_churnwatch_serve_starts_answers_and_stops_on_sigterm(model: Path, tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(REPO / "scripts" / "serve.py"),
        f"model_path={model}",
        "port=0",
        "device=cpu",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        lines = []
        for line in process.stdout:  # the line that says where it listens comes once the port is bound
            lines.append(line)
            if line.startswith("churnwatch serve:"):
                break
        url = next(w for w in lines[-1].split() if w.startswith("http://"))
        assert httpx.get(f"{url}/healthz", timeout=60).json()["status"] == "ok"
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    # uvicorn finishes the requests in flight and the app's shutdown, then ends by the signal it caught
    assert process.returncode in (0, -signal.SIGTERM), "".join(lines) + out
    assert "Application shutdown complete" in out


def test_a_bad_model_file_stops_the_command_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a model")
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "serve.py"),
            f"model_path={bad}",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert str(bad) in last and "Traceback" not in done.stderr
