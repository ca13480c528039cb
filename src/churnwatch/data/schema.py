"""The data contract's vocabulary: which columns of a user's tables mean what (EventSchema, CustomerSchema,
NumericField) and the canonical names and tokens every later stage reads.

A new event log needs a config change, never a code change: these schemas are parsed from the data config,
and everything downstream sees only the canonical columns they map to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from churnwatch.config.schema import DataConfig
from churnwatch.data.expressions import check_expression
from churnwatch.errors import ConfigError

CUSTOMER_ID = "customer_id"
TIMESTAMP = "timestamp"
MISSING = "__missing__"
"""Explicit category for a null categorical value (nulls are information, never silently dropped)."""
PAD_TOKEN, OOV_TOKEN, OTHER_TOKEN = "<pad>", "<oov>", "<other>"
INTERNAL_TOKENS = frozenset({MISSING, PAD_TOKEN, OOV_TOKEN, OTHER_TOKEN})
"""Tokens the encoders give a meaning of their own: input text never equals one (`parsing.escape_text`)."""
ESCAPE = "\\"

VISIT_REDUCTIONS = ("sum", "mean", "max", "last")


@dataclass(frozen=True)
class NumericField:
    """A numeric column and what counts as a valid value for it."""

    name: str
    min: float | None = None
    max: float | None = None
    fill: float | None = None
    """Value used for nulls. None: a null is invalid (handled by the policy)."""
    transform: Literal["log1p", "none"] = "log1p"
    """`log1p` is signed: sign(x) * log1p(|x|), so heavy-tailed amounts and negative deltas both work."""
    visit: Literal["sum", "mean", "max", "last"] = "sum"
    """How a visit's lines combine into the visit's value when events are grouped into visits
    (`data.visits`): an order's amount is the sum of its lines, a unit price their mean."""

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any]) -> NumericField:
        if isinstance(spec, str):
            return cls(name=spec)
        unknown = set(spec) - {"name", "min", "max", "fill", "transform", "visit"}
        if unknown or "name" not in spec:
            raise ConfigError(
                f"numeric field spec {dict(spec)!r}: needs 'name'; unknown keys: {sorted(unknown)}"
            )
        if spec.get("transform", "log1p") not in ("log1p", "none"):
            raise ConfigError(f"numeric field {spec['name']!r}: transform must be log1p or none")
        if spec.get("visit", "sum") not in VISIT_REDUCTIONS:
            raise ConfigError(
                f"numeric field {spec['name']!r}: visit must be one of {', '.join(VISIT_REDUCTIONS)}"
            )
        return cls(**{k: spec[k] for k in spec})


@dataclass(frozen=True)
class EventSchema:
    """Which columns of the raw events table mean what."""

    customer_id: str
    timestamp: str
    categorical: tuple[str, ...] = ()
    numeric: tuple[NumericField, ...] = ()
    timezone: str = "UTC"
    timestamp_format: str | None = None
    visit_key: str | None = None
    """Column whose value changes from one visit (order, basket, session) to the next (`data.visits.key`):
    kept beside the event fields so the encoder can group lines into visits."""
    item: str | None = None
    """Column naming what a purchase bought (`data.item`): the recommender's items."""
    item_name: str | None = None
    item_category: str | None = None

    @property
    def item_columns(self) -> tuple[tuple[str, str], ...]:
        """(column, config key) of the item columns the contract names, each once."""
        named = (
            ("data.item", self.item),
            ("data.item_name", self.item_name),
            ("data.item_category", self.item_category),
        )
        out: dict[str, str] = {}
        for key, col in named:
            if col is not None and col not in out:
                out[col] = key
        return tuple(out.items())

    @property
    def numeric_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.numeric)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> EventSchema:
        """The schema of a data config, whose expressions are parsed here too: every reader of a data
        config (training, the cache, scoring a model file) starts here, so a bad or forged expression
        fails before any data is read."""
        _check_expressions(cfg)
        schema = cls(
            customer_id=str(cfg["customer_id"]),
            timestamp=str(cfg["timestamp"]),
            categorical=tuple(str(c) for c in (cfg.get("categorical") or ())),
            numeric=tuple(
                NumericField.parse(dict(s) if isinstance(s, Mapping) else s)
                for s in (cfg.get("numeric") or ())
            ),
            timezone=str(cfg.get("timezone") or DataConfig.timezone),
            timestamp_format=cfg.get("timestamp_format"),
            visit_key=(cfg.get("visits") or {}).get("key"),
            item=cfg.get("item"),
            item_name=cfg.get("item_name"),
            item_category=cfg.get("item_category"),
        )
        names = [*schema.categorical, *schema.numeric_names]
        dupes = sorted({n for n in names if names.count(n) > 1})
        clash = sorted(set(names) & {CUSTOMER_ID, TIMESTAMP, schema.customer_id, schema.timestamp})
        if dupes or clash:
            raise ConfigError(
                f"event fields must be distinct and not the id/timestamp: repeated {dupes}, clash {clash}"
            )
        return schema


def _check_expressions(cfg: Mapping[str, Any]) -> None:
    check_expression(cfg.get("filter"), "data.filter")
    derived = cfg.get("derived") or {}
    if not isinstance(derived, Mapping):
        raise ConfigError(f"data.derived must map new column names to expressions, got {derived!r}")
    for name, text in derived.items():
        check_expression(text, f"data.derived.{name}")
    check_expression(cfg.get("label_events"), "data.label_events")


@dataclass(frozen=True)
class CustomerSchema:
    """Static per-customer attributes, joined to events by the customer id."""

    categorical: tuple[str, ...] = ()
    numeric: tuple[NumericField, ...] = ()
    dates: tuple[str, ...] = ()
    """Date columns (e.g. signup) become 'days before the cutoff' features, computed per snapshot."""

    @property
    def columns(self) -> tuple[str, ...]:
        """Every attribute column, in table order: categorical, numeric, dates."""
        return (*self.categorical, *(f.name for f in self.numeric), *self.dates)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> CustomerSchema:
        cfg = cfg or {}
        return cls(
            categorical=tuple(str(c) for c in (cfg.get("categorical") or ())),
            numeric=tuple(
                NumericField.parse(dict(s) if isinstance(s, Mapping) else s)
                for s in (cfg.get("numeric") or ())
            ),
            dates=tuple(str(c) for c in (cfg.get("dates") or ())),
        )
