"""Model files: signed at export and verified before loading (HMAC-SHA256 and Ed25519), and metadata whose
meaning is checked on load. A signature covers every byte torch reads (weights, TorchScript code,
metadata); a forged metadata field is refused in one line naming it, even with its checksum recomputed."""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from churnwatch.artifact.export import export_checkpoint
from churnwatch.artifact.model_file import CHECKSUM_FILE, META_FILE, load_artifact
from churnwatch.config.compose import compose
from churnwatch.errors import ArtifactError, ConfigError
from churnwatch.io.signing import SIGNATURE_ENTRY, Key, Verification, load_signing_key
from churnwatch.jobs.monitor import run_monitor
from churnwatch.runs.ensemble import train_ensemble
from churnwatch.runs.train import train
from churnwatch.scoring.scorer import Scorer
from tests.helpers import REPO, TINY, rewrite_model, train_tiny


def _pem_pair(root: Path, name: str) -> tuple[Path, Path]:
    """An Ed25519 private key and its public key, as `openssl genpkey` / `openssl pkey -pubout` write them."""
    private = Ed25519PrivateKey.generate()
    sign, verify = root / f"{name}.pem", root / f"{name}.pub.pem"
    sign.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    verify.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return sign, verify


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    out = {"hmac": root / "model.key", "other_hmac": root / "other.key"}
    for path in (out["hmac"], out["other_hmac"]):
        path.write_text(secrets.token_hex(32) + "\n")  # openssl rand -hex 32
    out["sign"], out["verify"] = _pem_pair(root, "sign")
    out["other_sign"], out["other_verify"] = _pem_pair(root, "other")
    return out


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> dict[str, Path]:
    """The smallest trained model (300 customers, one epoch), signed by training with the HMAC key, and its
    checkpoint exported again, signed with the Ed25519 key."""
    root = tmp_path_factory.mktemp("signing")
    metrics = train_tiny(root, f"signing_key={keys['hmac']}")
    ed25519 = export_checkpoint(
        metrics["best_checkpoint"], root / "ed25519.pt", signing_key=load_signing_key(keys["sign"])
    )
    return {
        "hmac": root / "run" / "model.pt",
        "ed25519": ed25519,
        "run": root / "run",
        "events": root / "data" / "events.parquet",
        "customers": root / "data" / "customers.parquet",
    }


def _check(verify_key: Path, required: bool = True) -> Verification | None:
    """What `verify_key=... require_signature=...` asks for."""
    return Verification.from_config(verify_key, required)


def _unsign(name: str, content: bytes) -> bytes | None:
    return None if name == SIGNATURE_ENTRY else content


def _rewrite(src: Path, dst: Path, edit: Callable[[str, bytes], bytes | None]) -> Path:
    """A copy of the archive `src` with each entry's content replaced by `edit(inner name, content)`
    (None drops the entry): what a forger with a zip tool can do."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            content = edit(info.filename.split("/", 1)[1], zin.read(info))
            if content is not None:
                zout.writestr(info, content)
    return dst


def _forge_meta(src: Path, dst: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of `src` whose metadata `change` edited, with its checksum recomputed (and no signature)."""
    return rewrite_model(src, dst, meta=change)


def _score(model: Path, run: dict[str, Path], verify: Verification | None, **kw: Any) -> pd.DataFrame:
    scorer = Scorer(model, device="cpu", drivers={"enabled": False}, verify=verify)
    return scorer.score(run["events"], run["customers"], progress=False, **kw)


# -- signing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "verify_key"), [("hmac", "hmac"), ("ed25519", "verify")])
def test_a_signed_model_verifies_loads_and_scores(
    run: dict[str, Path], keys: dict[str, Path], kind: str, verify_key: str
) -> None:
    model = run[kind]
    with zipfile.ZipFile(model) as archive:
        entry = next(n for n in archive.namelist() if n.endswith(SIGNATURE_ENTRY))
        signature = json.loads(archive.read(entry))
    key = Key.load(keys[verify_key], "verify_key")
    assert signature["algorithm"] == key.algorithm and signature["key_id"] == key.key_id
    torch.jit.load(str(model))  # the signature entry is one more extra file: plain torch loads the file
    scores = _score(model, run, _check(keys[verify_key]))
    assert len(scores) > 0 and scores["churn_probability"].between(0, 1).all()


@pytest.mark.parametrize(
    ("kind", "wrong"), [("hmac", "other_hmac"), ("ed25519", "other_verify"), ("hmac", "verify")]
)
def test_a_model_signed_with_another_key_is_refused(
    run: dict[str, Path], keys: dict[str, Path], kind: str, wrong: str
) -> None:
    with pytest.raises(ArtifactError, match=r"signature check failed: signed with \S+ key [0-9a-f]{16}, "):
        load_artifact(run[kind], verify=_check(keys[wrong]))


def _flip_weight(name: str, content: bytes) -> bytes:
    if name == "data/0":
        return bytes([content[0] ^ 1]) + content[1:]
    return content


def _halve_probabilities(name: str, content: bytes) -> bytes:
    """The calibration's TorchScript code, edited to halve every probability: no range or metadata check
    can tell."""
    if name == "code/__torch__/churnwatch/models/calibration.py":
        return content.replace(b"p = torch.sigmoid(_1)", b"p = torch.mul(torch.sigmoid(_1), 0.5)")
    return content


def _edit_metadata(name: str, content: bytes) -> bytes:
    if name == f"extra/{META_FILE}":
        return content.replace(b'"train_positive_rate": 0.', b'"train_positive_rate": 0.0')
    return content


@pytest.mark.parametrize("kind", ["hmac", "ed25519"])
@pytest.mark.parametrize("edit", [_flip_weight, _halve_probabilities, _edit_metadata])
def test_changing_any_entry_of_a_signed_file_is_refused(
    run: dict[str, Path],
    keys: dict[str, Path],
    tmp_path: Path,
    kind: str,
    edit: Callable[[str, bytes], bytes],
) -> None:
    forged = _rewrite(run[kind], tmp_path / "forged.pt", edit)
    if edit is _edit_metadata:  # ... with the checksum recomputed, as a forger would
        with zipfile.ZipFile(forged) as archive:
            text = next(archive.read(n) for n in archive.namelist() if n.endswith(META_FILE))
        checksum = hashlib.sha256(text).hexdigest().encode()
        forged = _rewrite(
            forged, tmp_path / "forged2.pt", lambda n, c: checksum if n == f"extra/{CHECKSUM_FILE}" else c
        )
    assert forged.read_bytes() != run[kind].read_bytes()
    load_artifact(forged)  # without a key the forgery loads: only the signature tells
    key = keys["hmac" if kind == "hmac" else "verify"]
    with pytest.raises(ArtifactError, match="signature check failed: the file changed after it was signed"):
        load_artifact(forged, verify=_check(key))


def test_the_code_forgery_really_changes_what_the_model_says(
    run: dict[str, Path], keys: dict[str, Path], tmp_path: Path
) -> None:
    """The forged code loads, passes every metadata check and scores: half the honest probabilities."""
    forged = _rewrite(run["hmac"], tmp_path / "forged.pt", _halve_probabilities)
    honest = _score(run["hmac"], run, None).set_index("customer_id")
    scaled = _score(forged, run, None).set_index("customer_id").loc[honest.index]
    network = ~honest["no_history"]  # customers without history get the base rate, not the network's
    assert network.any()
    assert np.allclose(
        scaled["churn_probability"][network], 0.5 * honest["churn_probability"][network], rtol=1e-4
    )


def test_a_removed_signature_is_refused_when_required_and_warned_about_otherwise(
    run: dict[str, Path], keys: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unsigned = _rewrite(run["ed25519"], tmp_path / "unsigned.pt", _unsign)
    with pytest.raises(ArtifactError, match="signature check failed: the file is not signed"):
        load_artifact(unsigned, verify=_check(keys["verify"]))
    with caplog.at_level(logging.WARNING, logger="churnwatch.io.signing"):
        load_artifact(unsigned, verify=_check(keys["verify"], required=False))
    assert [r.getMessage() for r in caplog.records] == [
        f"{unsigned} is not signed: loaded without a signature check (require_signature=true refuses it)"
    ]
    with pytest.raises(ArtifactError, match="signature check failed"):
        run_monitor(unsigned, run["events"], {}, verify=_check(keys["verify"]), device="cpu")


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        (b"not json", "unreadable signature entry"),
        (b'{"algorithm": "none\\nok", "key_id": "0", "signature": ""}', "unknown algorithm or key id"),
    ],
)
def test_a_garbled_signature_entry_is_refused_in_one_line(
    run: dict[str, Path], keys: dict[str, Path], tmp_path: Path, entry: bytes, says: str
) -> None:

    def garble(name: str, content: bytes) -> bytes:
        return entry if name == SIGNATURE_ENTRY else content

    forged = _rewrite(run["ed25519"], tmp_path / "forged.pt", garble)
    with pytest.raises(ArtifactError) as err:
        load_artifact(forged, verify=_check(keys["verify"], required=False))
    assert "\n" not in str(err.value) and f"signature check failed: {says}" in str(err.value)


def test_keys_in_the_wrong_place_are_config_errors(
    keys: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="require_signature=true needs verify_key"):
        Verification.from_config(None, True)
    assert Verification.from_config(None, False) is None
    with pytest.raises(ConfigError, match="is a private key: verify with its public key"):
        Verification.from_config(keys["sign"], True)
    with pytest.raises(ConfigError, match="is a public key: signing needs the private key"):
        load_signing_key(keys["verify"])
    (tmp_path / "short.key").write_text("secret\n")
    with pytest.raises(ConfigError, match="an HMAC secret of 6 bytes is too short"):
        load_signing_key(tmp_path / "short.key")
    with pytest.raises(ConfigError, match="cannot read the key file"):
        Verification.from_config(tmp_path / "missing.pem", True)
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives", None)  # as if not installed
    with pytest.raises(
        ConfigError, match=r"needs the optional package cryptography: pip install 'churnwatch\[signing\]'"
    ):
        Verification.from_config(keys["verify"], True)
    assert Key.load(keys["hmac"], "verify_key").algorithm == "hmac-sha256"  # HMAC needs nothing


def test_a_bad_signing_key_stops_training_before_it_starts(keys: dict[str, Path], tmp_path: Path) -> None:
    cfg = compose("train", [f"paths.output_dir={tmp_path}", f"signing_key={keys['verify']}", *TINY])
    with pytest.raises(ConfigError, match="signing_key=.* is a public key"):
        train(cfg)
    assert not list(tmp_path.iterdir())


def test_a_signed_ensemble_verifies_and_its_metadata_is_checked(
    run: dict[str, Path], keys: dict[str, Path], tmp_path: Path
) -> None:
    metrics = train_ensemble([run["run"]], tmp_path / "ens", signing_key=load_signing_key(keys["sign"]))
    model = Path(metrics["model_path"])
    _, meta = load_artifact(model, verify=_check(keys["verify"]))
    assert meta["ensemble"]["weights"] == [1.0]
    forged = _forge_meta(model, tmp_path / "forged.pt", lambda m: m["ensemble"].update(weights=[1.7]))
    with pytest.raises(ArtifactError, match=r"metadata ensemble: weights \[1.7\] are not non-negative"):
        load_artifact(forged)


@pytest.mark.parametrize(
    ("config", "args"),
    [
        ("score", ["events_path=e.parquet", "output_path=o.parquet"]),
        ("monitor", ["events_path=e.parquet"]),
        ("merge_scores", ["parts=p.parquet", "output_path=o.parquet"]),
    ],
)
def test_require_signature_without_a_key_is_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture, config: str, args: list[str]
) -> None:
    """Each loading command's task function, as the CLI runs it (Hydra passes a composed config through)."""
    main = importlib.import_module(f"churnwatch.cli.{config}").main
    model = tmp_path / "model.pt"
    with pytest.raises(SystemExit) as exited:
        main(compose(config, [f"model_path={model}", "require_signature=true", *args]))
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"churnwatch {config.replace('_', '-')}: require_signature=true needs verify_key=<the public key, or "
        "HMAC secret, file> (or CHURNWATCH_VERIFY_KEY)"
    ]


def test_the_export_command_signs_with_its_signing_key(
    run: dict[str, Path], keys: dict[str, Path], tmp_path: Path
) -> None:
    ckpt = next((run["run"] / "checkpoints").glob("*.ckpt"))
    out = tmp_path / "model.pt"
    importlib.import_module("churnwatch.cli.export").main(
        compose("export", [f"ckpt_path={ckpt}", f"output_path={out}", f"signing_key={keys['other_sign']}"])
    )
    load_artifact(out, verify=_check(keys["other_verify"]))
    with pytest.raises(ArtifactError, match="signature check failed"):
        load_artifact(out, verify=_check(keys["verify"]))


def test_score_cli_refuses_an_unsigned_model_in_one_line(
    run: dict[str, Path], keys: dict[str, Path], tmp_path: Path
) -> None:
    """The verify key from the environment (CHURNWATCH_VERIFY_KEY), the model file unsigned."""
    unsigned = _rewrite(run["hmac"], tmp_path / "unsigned.pt", _unsign)
    out = tmp_path / "scores.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "churnwatch", "score", f"model_path={unsigned}",
         f"events_path={run['events']}", f"output_path={out}", "require_signature=true", "device=cpu",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=REPO, check=False,
        env={**os.environ, "CHURNWATCH_VERIFY_KEY": str(keys["hmac"])},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"churnwatch score: {unsigned}: signature check failed: the file is not signed (require_signature)"
    ]
    assert not out.exists()


# -- what the metadata means ------------------------------------------------------------------------------


def test_a_base_rate_of_7_5_scored_7_5_and_is_now_refused(
    run: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Customers without history before as_of get the training churn rate: edited to 7.5, they scored 7.5."""
    forged = _forge_meta(run["hmac"], tmp_path / "forged.pt", lambda m: m.update(train_positive_rate=7.5))
    events = pd.read_parquet(run["events"])
    as_of = events.groupby("customer_id")["timestamp"].min().median()  # half the customers have no history
    with monkeypatch.context() as patched:
        patched.setattr("churnwatch.artifact.model_file.check_meta", lambda *args: None)  # before the check
        assert _score(forged, run, None, as_of=as_of)["churn_probability"].max() == 7.5
    with pytest.raises(ArtifactError) as err:
        load_artifact(forged)
    assert str(err.value) == f"{forged}: metadata train_positive_rate: 7.5 is not a number in [0, 1]"


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(meta: dict[str, Any]) -> None:
        *parents, last = key.split(".")
        node = meta
        for part in parents:
            node = node[part]
        node[last] = value(node[last]) if callable(value) else value

    return change


def _delete(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda meta: meta.pop(key)


FORGED = [  # (what changes, the key the one-line error names, what it says)
    (_set("threshold", 1.5), "threshold", r"1.5 is not a probability cut-off in \[0, 1\]"),
    (_set("threshold", float("nan")), "threshold", "nan is not a probability cut-off"),
    (_set("tiers.high", 0.01), "tiers.medium", r"is above tiers.high 0.01 \(tiers must be high >= medium\)"),
    (_set("tiers.medium", -0.2), "tiers.medium", "-0.2 is not a probability cut-off"),
    (_set("train_positive_rate", True), "train_positive_rate", "True is not a number"),
    (_set("encoder.max_len", -5), "encoder.max_len", "-5 is not a positive integer"),
    (_set("encoder.max_len", "128"), "encoder.max_len", "'128' is not a positive integer"),
    (_set("encoder.vocabs.channel", lambda v: [*v, "fax"]), "encoder.vocabs", "channel: 8 ids, the net"),
    (_set("encoder.vocabs.channel", lambda v: v[1:]), "encoder.vocabs", "channel: not a list of tokens"),
    (_set("encoder.static_vocabs.plan", lambda v: v[:-1]), "encoder.static_vocabs", "plan: 4 ids, the net"),
    (_set("data.categorical", lambda v: v[::-1]), "encoder.vocabs", "outcome: 6 ids, the net"),
    (_set("encoder.numeric.std", lambda v: [0.0] * len(v)), "encoder.numeric", "std: not all positive"),
    (_set("encoder.numeric.mean", lambda v: [float("inf")] * len(v)), "encoder.numeric", "mean: not 5"),
    (_set("encoder.numeric.fields", lambda v: v[::-1]), "encoder.numeric", "fields .* are not the"),
    (_set("featurizer.scale_std", lambda v: v[:-1]), "featurizer", "scale_mean, scale_std: not two lists"),
    (_set("features.n_aggregates", 93), "features.n_aggregates", "93, the network fuses 0"),
    (_set("features.n_aggregates", 5), "features.n_aggregates", "5, the featurizer makes 93"),
    (_set("calibration.slope", 2.0), "calibration", "temperature calibration differs from the network's"),
    (
        _set("calibration", {"method": "isotonic", "knots_x": [0.0, 1.0], "knots_y": [0.2, 1.7]}),
        "calibration",
        r"knots_x, knots_y: not two ascending lists of one length in \[0, 1\]",
    ),
    (_set("calibration.method", "magic"), "calibration", "method 'magic' is not one of"),
    (_set("drivers.center", ["x"]), "drivers.center", "is not a list of finite numbers"),
    (_delete("threshold"), "threshold", "is missing"),
    (_delete("featurizer"), "featurizer", "is missing"),
    (_set("encoder.numeric", None), "encoder.numeric", "None is not a mapping"),
]


@pytest.mark.parametrize(("change", "key", "says"), FORGED, ids=[f"{i}-{f[1]}" for i, f in enumerate(FORGED)])
def test_a_forged_metadata_field_is_refused_in_one_line_naming_it(
    run: dict[str, Path], tmp_path: Path, change: Callable[[dict[str, Any]], None], key: str, says: str
) -> None:
    forged = _forge_meta(run["hmac"], tmp_path / "forged.pt", change)
    with pytest.raises(ArtifactError) as err:
        load_artifact(forged)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{forged}: metadata {key}")
    assert re.search(says, message), message


def test_the_untouched_metadata_passes_its_checks_and_so_does_a_cut_nobody_reaches(
    run: dict[str, Path], tmp_path: Path
) -> None:
    """A tier nobody reaches has its cut-off just above the highest probability (up to 1 + 1e-6)."""
    same = _forge_meta(run["hmac"], tmp_path / "same.pt", lambda meta: None)
    _, meta = load_artifact(same)
    assert 0 <= meta["train_positive_rate"] <= 1
    nobody = _forge_meta(run["hmac"], tmp_path / "nobody.pt", _set("tiers.high", 1 + 1e-6))
    assert load_artifact(nobody)[1]["tiers"]["high"] > 1
