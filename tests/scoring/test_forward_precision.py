"""The CPU's bf16 forward: a recurrent network runs on a bf16 copy of its weights where oneDNN has bf16 RNN
kernels (under autocast elsewhere, and for every other network), with probabilities as close to fp32's as
autocast's, while the model's own fp32 weights stay for drivers and the hazard."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from churnwatch.artifact.model_file import load_model
from churnwatch.runtime.hardware import forced, onednn_bf16
from churnwatch.scoring.scorer import Scorer, _bf16_network
from tests.helpers import SCORE_OPTIONS

AS_OF = "2024-11-01"


def test_a_recurrent_network_scores_in_bf16_weights_close_to_fp32(model: Path):
    data = model.parent.parent / "data"
    inputs = dict(events=data / "events.parquet", customers=data / "customers.parquet", as_of=AS_OF)
    fp32 = Scorer(model, **SCORE_OPTIONS, precision="fp32").score(**inputs, progress=False)
    with forced(bf16=True):  # (on a CPU without bf16 units too)
        scorer = Scorer(model, **SCORE_OPTIONS, precision="bf16")
        got = scorer.score(**inputs, progress=False)
    if onednn_bf16().ok:
        assert {p.dtype for p in scorer.bf16_network.parameters()} == {torch.bfloat16}
    else:  # no bf16 RNN kernels: autocast, which keeps the LSTM in fp32
        assert scorer.bf16_network is None
    assert {p.dtype for p in scorer.model.parameters()} == {torch.float32}
    fp32, got = (f.set_index("customer_id").sort_index()["churn_probability"] for f in (fp32, got))
    assert fp32.index.equals(got.index)
    diff = (got - fp32).abs()
    assert 0 < diff.max() < 3e-2 and diff.mean() < 2e-3  # bf16's rounding, no more
    assert np.corrcoef(got.rank(), fp32.rank())[0, 1] > 0.999


def test_only_a_recurrent_network_with_a_churn_head_gets_bf16_weights(model: Path):
    artifact = load_model(model, torch.device("cpu"))
    meta = artifact.meta
    assert meta["config"]["model"]["net"]["encoder"] == "lstm"

    def variant(net: dict | None = None, tte: dict | None = None) -> dict:
        changed = copy.deepcopy(meta)
        changed["config"]["model"]["net"].update(net or {})
        changed["config"]["model"]["tte"] = {**(changed["config"]["model"].get("tte") or {}), **(tte or {})}
        return changed

    assert (_bf16_network(artifact.module, variant({"encoder": "gru"})) is not None) == onednn_bf16().ok
    # sines of bf16 angles, and survival in bf16, would lose what autocast keeps in fp32
    assert _bf16_network(artifact.module, variant({"encoder": "transformer"})) is None
    assert _bf16_network(artifact.module, variant(tte={"only": True})) is None
    assert _bf16_network(artifact.module.net, meta) is None  # no calibration: not a probability model
