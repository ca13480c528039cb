"""What a model file's metadata must mean before anything scores with it.

The checksum only proves the metadata is what some writer wrote. A metadata edited with its checksum
recomputed (or a buggy writer) could make scoring emit a churn probability of 7.5 (a no-history customer
gets `train_positive_rate`), index past an embedding (a vocabulary longer than the network's), or fail deep
inside numpy ("negative dimensions are not allowed" from `encoder.max_len=-5`). `check_meta` refuses such a
file in one line naming the key: one table, `CHECKS`, of what scoring reads, its type and range, then its
consistency with the model the file holds: a network's embedding sizes and input widths, a tabular model's
aggregate width and kind, calibration and ensemble buffers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch

from churnwatch.data.schema import OOV_TOKEN, PAD_TOKEN, CustomerSchema, EventSchema
from churnwatch.errors import ArtifactError
from churnwatch.features.aggregates import AggregateFeaturizer
from churnwatch.features.encode import SequenceEncoder
from churnwatch.models.calibration import METHODS, Calibrator
from churnwatch.models.scripted import SCRIPTABLE

NOBODY = 1e-6
"""A cut-off may exceed 1 by this much: the cut no probability reaches (thresholds._lowest_reaching)."""
HEAD = "net.head.0.weight"
"""The fusion head's first layer, one per network in the file (several in an ensemble)."""
TABLE = "aggregate_mean"
"""The training mean of each raw aggregate, one per tabular model in the file: its input width."""
_MISSING = object()


@dataclass
class _Model:
    """The metadata and the shapes and buffers of the model(s) it describes."""

    meta: Mapping[str, Any]
    shapes: dict[str, tuple[int, ...]]
    buffers: dict[str, torch.Tensor]
    nets: list[str]
    """Name prefix of each network: "" for one model, "members.<i>." in an ensemble."""
    tables: list[str]
    """Name prefix of each tabular model (TabularProbabilityModel), likewise."""
    encoder: SequenceEncoder | None = None
    """Set by the `encoder` check, for the checks after it."""

    @classmethod
    def of(cls, meta: Mapping[str, Any], module: torch.nn.Module) -> _Model:
        shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
        buffers = dict(module.named_buffers())
        shapes.update({name: tuple(b.shape) for name, b in buffers.items()})

        def prefixes(suffix: str) -> list[str]:
            return sorted((n.removesuffix(suffix) for n in shapes if n.endswith(suffix)), key=_member)

        return cls(meta, shapes, buffers, prefixes(HEAD), prefixes(TABLE))

    @property
    def members(self) -> list[str]:
        """Every model's prefix, networks and tabular ones, in member order."""
        return sorted(self.nets + self.tables, key=_member)

    def rows(self, prefix: str, group: str) -> list[int]:
        """Rows of each embedding of `group` (net.events.embeddings, net.static_embeddings)."""
        out = []
        while (shape := self.shapes.get(f"{prefix}{group}.{len(out)}.weight")) is not None:
            out.append(shape[0])
        return out

    def fused_width(self, prefix: str) -> int:
        """Inputs the head takes beside the sequence vector and the static embeddings: static numbers and
        aggregate features (a network with a time-to-event head also takes the recency; one with that
        head alone has no churn head: it fuses nothing)."""
        if prefix + HEAD not in self.shapes:
            return len(self.encoder.static_num_names)
        rnn = self.shapes.get(f"{prefix}net.sequence.rnn.weight_hh_l0")
        recency = 1 if f"{prefix}net.hazard.proj.weight" in self.shapes else 0
        sequence = rnn[1] if rnn else self.shapes[f"{prefix}net.sequence.norm.weight"][0]
        embedded = 0
        while (shape := self.shapes.get(f"{prefix}net.static_embeddings.{embedded}.weight")) is not None:
            sequence += shape[1]
            embedded += 1
        return self.shapes[prefix + HEAD][1] - sequence - recency


Test = Callable[[Any, _Model], str | None]
"""A check of one value: what is wrong with it, or None."""


def _member(prefix: str) -> int:
    """The member number of a model's prefix ("members.<i>."); 0 for the model of a one-model file."""
    return int(prefix.split(".")[1]) if prefix else 0


def _network(prefix: str) -> str:
    """How messages name the network at `prefix`."""
    return f"the member network {prefix.rstrip('.')}" if prefix else "the network"


def _tabular(prefix: str) -> str:
    """How messages name the tabular model at `prefix`."""
    return f"the member model {prefix.rstrip('.')}" if prefix else "the tabular model"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _numbers(values: Any, n: int | None = None) -> bool:
    """A list of finite numbers (of length `n`)."""
    return isinstance(values, list) and all(map(_is_number, values)) and (n is None or len(values) == n)


def _unit(value: Any, m: _Model) -> str | None:
    return None if _is_number(value) and 0 <= value <= 1 else f"{_show(value)} is not a number in [0, 1]"


def _cut(value: Any, m: _Model) -> str | None:
    ok = _is_number(value) and 0 <= value <= 1 + NOBODY
    return None if ok else f"{_show(value)} is not a probability cut-off in [0, 1]"


def _positive_int(value: Any, m: _Model) -> str | None:
    return None if _is_int(value) and value > 0 else f"{_show(value)} is not a positive integer"


def _count(value: Any, m: _Model) -> str | None:
    return None if _is_int(value) and value >= 0 else f"{_show(value)} is not a count (an integer >= 0)"


def _positive_int_or_null(value: Any, m: _Model) -> str | None:
    return None if value is None else _positive_int(value, m)


def _mapping(value: Any, m: _Model) -> str | None:
    return None if isinstance(value, Mapping) else f"{_show(value)} is not a mapping"


def _numbers_or_null(value: Any, m: _Model) -> str | None:
    return None if value is None or _numbers(value) else f"{_show(value)} is not a list of finite numbers"


def _data(value: Any, m: _Model) -> str | None:
    """The data contract, parsed as the scorer parses it (what it refuses is reported as malformed)."""
    if not isinstance(value, Mapping):
        return _mapping(value, m)
    EventSchema.from_config(value)
    CustomerSchema.from_config(value.get("customers"))
    return None


def _token_lists(value: Any, m: _Model) -> str | None:
    if not isinstance(value, Mapping):
        return _mapping(value, m)
    for name, tokens in value.items():
        ok = isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)
        if not ok or tokens[:2] != [PAD_TOKEN, OOV_TOKEN]:
            return f"{name}: not a list of tokens starting {PAD_TOKEN}, {OOV_TOKEN}"
    return None


def _stats(value: Any, m: _Model) -> str | None:
    """NumericStats state: one finite mean and one positive finite standard deviation per field."""
    if not isinstance(value, Mapping):
        return _mapping(value, m)
    fields = value["fields"]
    if not isinstance(fields, list) or not all(isinstance(f, Mapping) for f in fields):
        return "fields: not a list of field specs"
    for key in ("mean", "std"):
        if not _numbers(value[key], len(fields)):
            return f"{key}: not {len(fields)} finite numbers (one per field)"
    return "std: not all positive" if min(value["std"], default=1) <= 0 else None


def _encoder(value: Any, m: _Model) -> str | None:
    """Rebuilt as the scorer rebuilds it, for the checks that compare it with the network."""
    data = m.meta["data"]
    customers = CustomerSchema.from_config(data.get("customers")) if data.get("customers_path") else None
    m.encoder = SequenceEncoder.from_state(value, EventSchema.from_config(data), customers)
    return None


def _featurizer(value: Any, m: _Model) -> str | None:
    if not isinstance(value, Mapping):
        return _mapping(value, m)
    n = len(value["scale_mean"])
    if not _numbers(value["scale_mean"]) or not _numbers(value["scale_std"], n):
        return "scale_mean, scale_std: not two lists of finite numbers of one length"
    if min(value["scale_std"], default=1) <= 0:
        return "scale_std: not all positive"
    fill = value["fill"]
    if not isinstance(fill, Mapping) or len(fill) != n or not all(map(_is_number, fill.values())):
        return f"fill: not {n} finite numbers (one per aggregate feature)"
    problem = _token_lists(value["static_vocabs"], m)
    if problem:
        return f"static_vocabs: {problem}"
    AggregateFeaturizer.from_state(value)
    return None


def _medium_cut(value: Any, m: _Model) -> str | None:
    high = m.meta["tiers"]["high"]
    if problem := _cut(value, m):
        return problem
    return None if value <= high else f"{value:g} is above tiers.high {high:g} (tiers must be high >= medium)"


def _calibration(value: Any, m: _Model) -> str | None:
    """A calibrator that maps into [0, 1], and the one the network applies (its calibration buffers)."""
    cal = Calibrator.from_state(value)
    if cal.method not in METHODS:
        return f"method {cal.method!r} is not one of {METHODS}"
    if not (_is_number(cal.slope) and _is_number(cal.intercept)):
        return f"slope {cal.slope!r} and intercept {cal.intercept!r} must be finite"
    knots = (list(cal.knots_x), list(cal.knots_y))
    if len(knots[0]) != len(knots[1]) or not all(_numbers(k) and _unit_steps(k) for k in knots):
        return "knots_x, knots_y: not two ascending lists of one length in [0, 1]"
    expected = dict(cal.layer().named_buffers())
    for name, buffer in expected.items():
        found = m.buffers.get(f"calibration.{name}", torch.zeros(0)).cpu()
        if found.shape != buffer.shape or not torch.equal(found.to(buffer.dtype), buffer):
            return f"{cal.method} calibration differs from the network's calibration.{name}"
    return None


def _unit_steps(values: list[float]) -> bool:
    return all(0 <= v <= 1 for v in values) and all(a <= b for a, b in pairwise(values))


def _kind(value: Any, m: _Model) -> str | None:
    """A tabular model's file: one scriptable estimator, and no network beside it."""
    if value != "tabular":
        return f"{_show(value)} is not a model kind (tabular; none for a network)"
    if m.nets or m.tables != [""]:
        return (
            f"the file holds {len(m.nets)} networks and {len(m.tables)} tabular models, not one tabular model"
        )
    if m.meta.get("estimator") not in SCRIPTABLE:
        return f"estimator {_show(m.meta.get('estimator'))} is not one of {SCRIPTABLE}"
    return None


def _ensemble(value: Any, m: _Model) -> str | None:
    """Convex weights and finite calibrations, one per member model: the ones the file applies; which
    members read raw aggregates, and the featurizer's scaling it applies for the others."""
    members = m.members
    n = len(members)
    for key in ("names", "members", "nets", "weights", "calibration"):
        if not isinstance(value[key], list) or len(value[key]) != n:
            return f"{key}: not {n} entries (one per member model)"
    weights = value["weights"]
    if not _numbers(weights) or min(weights) < 0 or abs(sum(weights) - 1) > 1e-6:
        return f"weights {_show(weights)} are not non-negative numbers summing to 1"
    if not all(_numbers(pair, 2) for pair in value["calibration"]):
        return "calibration: not one finite [slope, intercept] per member"
    slope, intercept = zip(*value["calibration"], strict=True)
    for name, values in (("weights", weights), ("slope", slope), ("intercept", intercept)):
        found = m.buffers.get(name)
        if found is None or found.tolist() != list(values):
            return f"{name} differ from the network's {name} buffer"
    raw = m.buffers.get("raw_aggregates", torch.zeros(n, dtype=torch.bool)).tolist()
    if raw != [p in m.tables for p in members]:
        return f"raw_aggregates {raw}: not true exactly for the tabular members"
    for name in ("scale_mean", "scale_std"):  # scaled here from the raw aggregates for the networks
        found = m.buffers.get(name)
        if found is not None and found.tolist() != m.meta["featurizer"][name]:
            return f"the file's {name} differs from the featurizer's {name}"
    return None


def _embeddings(static: bool) -> Test:
    """Each categorical input has as many ids as its embedding in every network has rows."""

    def test(value: Any, m: _Model) -> str | None:
        if not m.nets and not m.tables:
            return f"the file holds no churnwatch model to match (no net.head, no {TABLE})"
        enc = m.encoder
        names = enc.static_cat_names if static else enc.cat_names
        missing = [n for n in (names if static else enc.schema.categorical) if n not in value]
        if missing:
            return f"no vocabulary for {missing}"
        sizes = enc.static_cat_cardinalities if static else enc.cat_cardinalities
        group = "net.static_embeddings" if static else "net.events.embeddings"
        for prefix in m.nets:
            rows = m.rows(prefix, group)
            if len(rows) != len(sizes):
                return f"{len(sizes)} fields {names}, {_network(prefix)} embeds {len(rows)}"
            for name, size, found in zip(names, sizes, rows, strict=True):
                if size != found:
                    return f"{name}: {size} ids, {_network(prefix)}'s embedding of it has {found} rows"
        return None

    return test


def _numeric_inputs(static: bool) -> Test:
    """The numeric fields are the contract's, in its order (and the event ones the network's width)."""

    def test(value: Any, m: _Model) -> str | None:
        enc = m.encoder
        stats, expected = (
            (enc.static_numeric, enc.static_num_names) if static else (enc.numeric, enc.num_names)
        )
        names = [f.name for f in stats.fields]
        if names != expected:
            return f"fields {names} are not the contract's {expected}"
        for prefix in [] if static else m.nets:
            width = m.shapes.get(f"{prefix}net.events.numeric.weight", (0, 0))[1]
            if width != len(names):
                return f"{len(names)} fields, {_network(prefix)} takes {width} event numbers"
        return None

    return test


def _fused_inputs(value: Any, m: _Model) -> str | None:
    """Aggregate features: as many as the featurizer makes, as many as each network fuses and each tabular
    model reads; raw (features.raw_aggregates, what scoring passes) exactly when a tabular model reads
    them, scaled otherwise."""
    made = len(m.meta["featurizer"]["scale_mean"])
    if value and value != made:
        return f"{value}, the featurizer makes {made} aggregate features"
    raw = m.meta["features"].get("raw_aggregates", False)
    if raw is not bool(m.tables):
        return (
            f"raw_aggregates is {_show(raw)}, the file holds {len(m.tables)} tabular models (they read raw)"
        )
    uses = m.buffers.get("uses_aggregates")  # an ensemble: which members fuse them
    n_static = len(m.encoder.static_num_names)
    for prefix in m.nets:
        fuses = bool(uses[_member(prefix)]) if uses is not None else True
        found = m.fused_width(prefix) - n_static
        if found != (value if fuses else 0):
            return f"{value}, {_network(prefix)} fuses {found} (beside {n_static} static numbers)"
    for prefix in m.tables:
        found = m.shapes[prefix + TABLE][0]
        if found != value:
            return f"{value}, {_tabular(prefix)} reads {found}"
    return None


CHECKS: tuple[tuple[str, Test, bool], ...] = (
    # (key, test, required): what scoring and monitoring read, with its type and range ...
    ("data", _data, True),
    ("encoder.max_len", _positive_int, True),
    ("encoder.min_count", _count, True),
    ("encoder.max_vocab", _positive_int_or_null, True),
    ("encoder.vocabs", _token_lists, True),
    ("encoder.static_vocabs", _token_lists, True),
    ("encoder.numeric", _stats, True),
    ("encoder.static_numeric", _stats, True),
    ("encoder", _encoder, True),
    ("featurizer", _featurizer, True),
    ("features.n_aggregates", _count, True),
    ("threshold", _cut, True),
    ("tiers.high", _cut, True),
    ("tiers.medium", _medium_cut, True),
    ("tiers.rule", _mapping, False),
    ("train_positive_rate", _unit, True),
    ("calibration", _calibration, False),
    ("kind", _kind, False),
    ("ensemble", _ensemble, False),
    ("drivers.center", _numbers_or_null, False),
    ("segments", _mapping, False),
    ("reference.churn_rate", _unit, False),
    # ... then its agreement with the model(s) in the file
    ("encoder.vocabs", _embeddings(static=False), True),
    ("encoder.static_vocabs", _embeddings(static=True), True),
    ("encoder.numeric", _numeric_inputs(static=False), True),
    ("encoder.static_numeric", _numeric_inputs(static=True), True),
    ("features.n_aggregates", _fused_inputs, True),
)


def _lookup(meta: Mapping[str, Any], key: str) -> Any:
    value: Any = meta
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def check_meta(meta: Mapping[str, Any], module: torch.nn.Module, path: str | Path) -> None:
    """Raise ArtifactError, one line naming the key, at the first check in `CHECKS` the file fails."""
    m = _Model.of(meta, module)
    for key, test, required in CHECKS:
        value = _lookup(meta, key)
        if value is _MISSING:
            if required:
                raise ArtifactError(f"{path}: metadata {key} is missing")
            continue
        try:
            problem = test(value, m)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            detail = (str(exc).strip().splitlines() or [""])[0]
            problem = f"malformed ({type(exc).__name__}: {detail})"
        if problem:
            raise ArtifactError(f"{path}: metadata {key}: {problem}")
