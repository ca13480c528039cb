"""The disturbances of the robustness study, applied to a raw events table before it is scored.

Each perturbation changes only the rows dated before `as_of` (what the scorer reads as history), in the
raw columns of the model's data contract, so the loader validates and encodes the perturbed table exactly
as it would a real feed. Every random choice comes from a generator seeded by the study's seed and the
perturbation's name: the same perturbation is the same table for every model, and strength 0 changes
nothing.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnwatch.config.options import check_values
from churnwatch.data.parsing import parse_timestamps
from churnwatch.data.schema import EventSchema
from churnwatch.data.validation import require_columns
from churnwatch.errors import ConfigError

KINDS = ("dropout", "late_data", "amount_noise", "blank", "unseen", "duplicates", "as_of_shift")
UNSEEN_SUFFIX = "~unseen"
"""Appended to a value to make a token no vocabulary holds (a re-coded product line, a new channel)."""


@dataclass(frozen=True)
class PerturbationConfig:
    """The strengths of each kind (an empty list skips the kind) and the fields they touch (null: the
    contract's own, see `noise_fields` / `categorical_fields`)."""

    dropout: Sequence[float] = (0.1, 0.3, 0.5)
    late_days: Sequence[int] = (1, 3, 7, 14)
    noise_sigma: Sequence[float] = (0.1, 0.3, 0.5)
    noise_fields: Sequence[str] | None = None
    blank_share: Sequence[float] = (1.0,)
    blank_fields: Sequence[str] | None = None
    unseen_share: Sequence[float] = (0.1, 0.3, 0.5)
    unseen_fields: Sequence[str] | None = None
    duplicate_share: Sequence[float] = (0.1, 0.5)
    as_of_shift_days: Sequence[int] = (-7, 7)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> PerturbationConfig:
        """From the `perturbations` block (unknown keys and bad numbers refused in one line)."""
        values = dict(values or {})
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(
                f"perturbations: unknown key(s) {unknown} (known: {[f.name for f in fields(cls)]})"
            )
        as_tuple = {
            k: None if v is None else (v,) if isinstance(v, str | int | float) else tuple(v)
            for k, v in values.items()
        }
        cfg = cls(**as_tuple)
        check_values(
            {
                f"perturbations.{f.name}[{i}]": v
                for f in fields(cls)
                if not f.name.endswith("_fields")
                for i, v in enumerate(getattr(cfg, f.name))
            }
        )
        return cfg


@dataclass(frozen=True)
class Perturbation:
    """One disturbance at one strength; `field` names the column of the per-field kinds."""

    kind: str
    strength: float
    field: str | None = None

    @property
    def name(self) -> str:
        """The panel it belongs to: the kind, with its field for the per-field kinds."""
        return f"{self.kind} {self.field}" if self.field else self.kind

    @property
    def label(self) -> str:
        return f"{self.name} {self.strength:g}"

    def rng(self, seed: int) -> np.random.Generator:
        """The same draws for every model and run: seeded by the study's seed and this perturbation."""
        return np.random.default_rng([seed, zlib.crc32(self.label.encode())])


@dataclass(frozen=True)
class RawEvents:
    """A raw events table as the user gave it, with each row's time read under the contract."""

    frame: pd.DataFrame
    times: pd.Series
    """Naive wall-clock times in the contract's timezone; NaT where unparseable (the loader drops those)."""

    @classmethod
    def of(cls, frame: pd.DataFrame, schema: EventSchema, path: str | Path = "events") -> RawEvents:
        frame = frame.reset_index(drop=True)
        require_columns(frame, [schema.timestamp], str(path), "data.timestamp")
        times = parse_timestamps(frame[schema.timestamp], schema.timezone, schema.timestamp_format)
        return cls(frame, times.astype("datetime64[ns]"))

    def before(self, as_of: pd.Timestamp) -> np.ndarray:
        """Rows of the history a scoring run at `as_of` reads."""
        return (self.times < as_of).to_numpy()


def noise_fields(schema: EventSchema, columns: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """The amount-like fields the noise multiplies: `wanted`, else the contract's non-negative numeric
    fields on a log scale (amounts, quantities, prices) present in the raw table. A derived amount
    (`data.derived`) is not a raw column: it follows the noisy columns it is computed from."""
    if wanted is not None:
        return _check_fields(
            wanted, [c for c in schema.numeric_names if c in columns], "noise_fields", "numeric"
        )
    return [
        f.name
        for f in schema.numeric
        if f.name in columns and f.transform == "log1p" and f.min is not None and f.min >= 0
    ]


def categorical_fields(schema: EventSchema, wanted: Sequence[str] | None, key: str) -> list[str]:
    """`wanted` (each a categorical event field of the contract), else every one."""
    return (
        list(schema.categorical)
        if wanted is None
        else _check_fields(wanted, schema.categorical, key, "categorical")
    )


def _check_fields(wanted: Sequence[str], known: Sequence[str], key: str, what: str) -> list[str]:
    unknown = [f for f in wanted if f not in known]
    if unknown:
        raise ConfigError(
            f"perturbations.{key}: {unknown} are not {what} event fields (the contract has {list(known)})"
        )
    return list(wanted)


def plan(cfg: PerturbationConfig, schema: EventSchema, columns: Sequence[str]) -> list[Perturbation]:
    """Every perturbation of the study, kind by kind, in the order of the config."""
    out = [Perturbation("dropout", float(s)) for s in cfg.dropout]
    out += [Perturbation("late_data", int(s)) for s in cfg.late_days]
    if noise_fields(schema, columns, cfg.noise_fields):
        out += [Perturbation("amount_noise", float(s)) for s in cfg.noise_sigma]
    for name in categorical_fields(schema, cfg.blank_fields, "blank_fields"):
        out += [Perturbation("blank", float(s), name) for s in cfg.blank_share]
    for name in categorical_fields(schema, cfg.unseen_fields, "unseen_fields"):
        out += [Perturbation("unseen", float(s), name) for s in cfg.unseen_share]
    out += [Perturbation("duplicates", float(s)) for s in cfg.duplicate_share]
    out += [Perturbation("as_of_shift", int(s)) for s in cfg.as_of_shift_days]
    return out


@dataclass(frozen=True)
class Perturbed:
    """What a perturbation hands the scorer: the events table and the scoring date."""

    frame: pd.DataFrame
    as_of: pd.Timestamp
    changed_rows: int = 0
    """Rows removed, altered or added."""


def apply(
    p: Perturbation,
    raw: RawEvents,
    as_of: pd.Timestamp,
    seed: int,
    amount_fields: Sequence[str] = (),
) -> Perturbed:
    """The raw events with `p` applied to the rows before `as_of` (or the shifted scoring date)."""
    rng = p.rng(seed)
    frame, before = raw.frame, raw.before(as_of)
    history = np.flatnonzero(before)
    if p.kind == "dropout":
        drop = rng.choice(history, size=round(p.strength * len(history)), replace=False)
        return Perturbed(frame.drop(index=drop), as_of, len(drop))
    if p.kind == "late_data":
        late = before & (raw.times >= as_of - pd.Timedelta(days=p.strength)).to_numpy()
        return Perturbed(frame[~late], as_of, int(late.sum()))
    if p.kind == "amount_noise":
        noisy = frame.copy()
        for name in amount_fields:  # median-preserving: log-values move by N(0, sigma), no bias in log space
            values = pd.to_numeric(noisy[name], errors="coerce").to_numpy(dtype=np.float64, copy=True)
            values[history] *= rng.lognormal(0.0, p.strength, size=len(history))
            noisy[name] = values
        return Perturbed(noisy, as_of, len(history) if amount_fields and p.strength > 0 else 0)
    if p.kind in ("blank", "unseen"):
        return _recode(p, frame, before, rng, as_of)
    if p.kind == "duplicates":
        copies = rng.choice(history, size=round(p.strength * len(history)), replace=False)
        return Perturbed(
            pd.concat([frame, frame.loc[np.sort(copies)]], ignore_index=True), as_of, len(copies)
        )
    if p.kind == "as_of_shift":
        return Perturbed(frame, as_of + pd.Timedelta(days=p.strength), 0)
    raise ConfigError(f"unknown perturbation kind {p.kind!r} (one of {', '.join(KINDS)})")


def _recode(
    p: Perturbation, frame: pd.DataFrame, before: np.ndarray, rng: np.random.Generator, as_of: pd.Timestamp
) -> Perturbed:
    """`blank`: a share of the field's values before as_of set to null; `unseen`: a share replaced by a
    token no vocabulary knows (the value with UNSEEN_SUFFIX), among the rows that have a value."""
    values = frame[p.field].astype(object)
    rows = np.flatnonzero(before & values.notna().to_numpy())
    chosen = np.sort(rng.choice(rows, size=round(p.strength * len(rows)), replace=False))
    recoded = values.to_numpy(copy=True)
    recoded[chosen] = None if p.kind == "blank" else [f"{v}{UNSEEN_SUFFIX}" for v in recoded[chosen]]
    out = frame.copy()
    out[p.field] = pd.Series(recoded, index=frame.index, dtype=object)
    return Perturbed(out, as_of, len(chosen))
