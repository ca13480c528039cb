"""Sequence models: padding-invariance, pooling, TorchScript equality, and the artifact format."""

from __future__ import annotations

import json

import pytest
import torch

from churnwatch.artifact.metadata import FORMAT_VERSION
from churnwatch.artifact.model_file import (
    CHECKSUM_FILE,
    META_FILE,
    ProbabilityModel,
    load_artifact,
    write_artifact,
)
from churnwatch.errors import ArtifactError
from churnwatch.models.encoders import ChurnNet

CARDS = [9, 12, 8, 25]
N_NUM = 5


def _net(encoder: str, pooling: str, n_agg: int = 0) -> ChurnNet:
    torch.manual_seed(0)
    return ChurnNet(
        CARDS,
        N_NUM,
        [3, 4],
        [5, 4],
        1,
        n_aggregates=n_agg,
        encoder=encoder,
        d_model=16,
        hidden=16,
        num_layers=2,
        n_heads=2,
        dropout=0.1,
        pooling=pooling,
        head_hidden=8,
        max_len=64,
    ).eval()


def _batch(lengths: list[int], n_agg: int = 0, width: int | None = None, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    b, width = len(lengths), width or max(lengths)
    lengths_t = torch.tensor(lengths)
    mask = torch.arange(width)[None, :] < lengths_t[:, None]
    cat = torch.stack([torch.randint(1, c, (b, width), generator=g) for c in CARDS], dim=-1) * mask[..., None]
    num = torch.randn(b, width, N_NUM, generator=g) * mask[..., None]
    return (
        cat,
        num,
        lengths_t,
        torch.randint(0, 4, (b, 2), generator=g),
        torch.randn(b, 1, generator=g),
        torch.randn(b, n_agg, generator=g),
    )


ENCODERS = ["lstm", "gru", "transformer"]
POOLINGS = ["last", "mean", "attention"]


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_padding_never_changes_a_prediction(encoder, pooling):
    net = _net(encoder, pooling)
    lengths = [1, 7, 3, 12]
    tight = _batch(lengths)
    wide = list(_batch(lengths, width=20))
    # the same events, then 8 more padding steps
    wide[0] = torch.nn.functional.pad(tight[0], (0, 0, 0, 8))
    wide[1] = torch.nn.functional.pad(tight[1], (0, 0, 0, 8))
    wide[3:] = tight[3:]
    with torch.no_grad():
        assert torch.allclose(net(*tight), net(*wide), atol=1e-5)
        alone = torch.cat([net(*(t[i : i + 1] for t in _slice(tight, i))) for i in range(len(lengths))])
    assert torch.allclose(net(*tight), alone, atol=1e-5)  # a row's score does not depend on its batch


def _slice(batch, i):
    cat, num, lengths, sc, sn, agg = batch
    width = int(lengths[i])
    return cat[:, :width], num[:, :width], lengths, sc, sn, agg


@pytest.mark.parametrize("encoder", ENCODERS)
def test_last_pooling_reads_the_last_real_step(encoder):
    net = _net(encoder, "last")
    batch = _batch([4, 2])
    changed = [t.clone() for t in batch]
    changed[0][1, 1] = 1  # change row 1's last REAL event
    with torch.no_grad():
        before, after = net(*batch), net(*changed)
    assert not torch.isclose(before[1], after[1], atol=1e-6)
    assert torch.isclose(before[0], after[0])


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("n_agg", [0, 3])
def test_scripted_model_equals_eager_on_mixed_lengths(encoder, n_agg, tmp_path):
    pooling = {"lstm": "last", "gru": "mean", "transformer": "attention"}[encoder]
    model = ProbabilityModel(_net(encoder, pooling, n_agg)).eval()
    path = write_artifact(model, {"format_version": FORMAT_VERSION}, tmp_path / "model.pt")
    scripted = torch.jit.load(str(path))  # load_artifact refuses metadata short of a real export's
    for lengths in ([1], [1, 5, 2, 9], [30, 1, 17]):
        batch = _batch(lengths, n_agg)
        with torch.no_grad():
            eager, script = model(*batch), scripted(*batch)
        assert eager.shape == (len(lengths),)
        assert torch.allclose(eager, script, atol=1e-5)
        assert ((script > 0) & (script < 1)).all()


def _rewrite_meta(path, meta_text: str, checksum: str | None = None) -> None:
    import hashlib

    module = torch.jit.load(str(path))
    torch.jit.save(
        module,
        str(path),
        _extra_files={
            META_FILE: meta_text,
            CHECKSUM_FILE: checksum or hashlib.sha256(meta_text.encode()).hexdigest(),
        },
    )


def test_unknown_format_version_and_tampering_are_refused(tmp_path):
    path = write_artifact(
        ProbabilityModel(_net("gru", "last")), {"format_version": FORMAT_VERSION}, tmp_path / "model.pt"
    )
    _rewrite_meta(path, json.dumps({"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ArtifactError, match=f"format version {FORMAT_VERSION + 1}"):
        load_artifact(path)
    _rewrite_meta(path, json.dumps({"format_version": FORMAT_VERSION}), checksum="0" * 64)
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifact(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ArtifactError, match="not a readable churnwatch model"):
        load_artifact(path)
    with pytest.raises(ArtifactError, match="not found"):
        load_artifact(tmp_path / "missing.pt")
