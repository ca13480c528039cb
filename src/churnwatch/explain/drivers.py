"""Why this customer: attributions mapped to named business indicators, and the top drivers as text.

Networks are explained with integrated gradients (captum) on the uncalibrated logit, over every input the
artifact embeds: each event's categorical embeddings and numbers (time gaps included, so silence shows
up), the static attributes and, for hybrids, the aggregates. The baseline is all-zero inputs: the padding
embedding and the training mean of each standardised number. Trees use their own per-row contributions
(LightGBM's TreeSHAP, the path contributions of scikit-learn trees), linear models coefficient × centred
input. An `IndicatorCatalogue` (data config `indicators`) then owns every (event, field), static field and
aggregate by first match, sums the attributions per indicator, and renders the top ones in words from the
customer's own aggregates ("no purchase for 45 days (usual gap 12)").
"""

from __future__ import annotations

import fnmatch
import math
import re
import string
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from churnwatch.data.expressions import check_expression, parsed
from churnwatch.data.schema import CUSTOMER_ID
from churnwatch.data.snapshots import EventLog, Snapshots
from churnwatch.errors import ConfigError
from churnwatch.features.aggregates import AggregateTable
from churnwatch.features.encode import SequenceEncoder
from churnwatch.features.window import kept_steps
from churnwatch.pipeline.batch import pad_batch
from churnwatch.runtime.hardware import threads_as_workers

IG_ROWS = 256
"""Rows (customers × steps) per forward and backward pass of integrated gradients: the recurrent state of
a few hundred rows stays in cache, as for scoring's forward (BENCHMARKS.md, driver attribution)."""
GROUPS = (
    "purchase_behaviour",
    "satisfaction_and_service",
    "loyalty",
    "price_and_competition",
    "customer_profile",
)
OTHER = "other"


@dataclass(frozen=True)
class Indicator:
    """A named business signal and the inputs whose attribution it owns.

    events: a condition over event fields ("*": every event); the indicator owns `fields` of those events
    (all fields if `fields` is empty). Without `events`, it owns `fields` of every event. static /
    aggregates: names or glob patterns of static fields and aggregate columns. text: (condition, template)
    pairs, the first whose condition holds; templates format the customer's aggregates, customer attributes
    and `values` (named expressions over those). The conditions and expressions: docs/EXPRESSIONS.md.
    """

    name: str
    group: str
    label: str
    events: str | None = None
    fields: tuple[str, ...] = ()
    static: tuple[str, ...] = ()
    aggregates: tuple[str, ...] = ()
    values: Mapping[str, str] = field(default_factory=dict)
    text: tuple[tuple[str | None, str], ...] = ()
    truth: str | None = None

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any]) -> Indicator:
        cfg = dict(cfg)
        unknown = set(cfg) - {f for f in cls.__dataclass_fields__ if f != "name"}
        if unknown:
            raise ConfigError(f"data.indicators.{name}: unknown keys {sorted(unknown)}")
        group = str(cfg.get("group", OTHER))
        if group not in (*GROUPS, OTHER):
            raise ConfigError(f"data.indicators.{name}.group must be one of {GROUPS}, got {group!r}")
        text = cfg.get("text") or ()
        if isinstance(text, str):
            text = [{"when": None, "say": text}]
        # parsed now, so a bad expression (or a forged one in a model file) fails before any data is read
        if cfg.get("events") != "*":
            check_expression(cfg.get("events"), f"data.indicators.{name}.events")
        for key, expr in dict(cfg.get("values") or {}).items():
            check_expression(expr, f"data.indicators.{name}.values.{key}")
        for t in text:
            check_expression(t.get("when"), f"data.indicators.{name}.text")
        return cls(
            name=name,
            group=group,
            label=str(cfg.get("label", name.replace("_", " "))),
            events=cfg.get("events"),
            fields=tuple(cfg.get("fields") or ()),
            static=tuple(cfg.get("static") or ()),
            aggregates=tuple(cfg.get("aggregates") or ()),
            values=dict(cfg.get("values") or {}),
            text=tuple((t.get("when"), str(t["say"])) for t in text),
            truth=cfg.get("truth"),
        )


class IndicatorCatalogue:
    """The indicators of a data config, in priority order, plus `other` for whatever none of them owns."""

    def __init__(self, indicators: Sequence[Indicator]):
        self.indicators = [*indicators, Indicator(OTHER, OTHER, "other history")]
        self.names = [i.name for i in self.indicators]
        self.groups = [i.group for i in self.indicators]

    @classmethod
    def from_config(
        cls, cfg: Mapping[str, Any] | None, order: Sequence[str] | None = None
    ) -> IndicatorCatalogue:
        """`order`: the priority as trained (JSON metadata sorts mapping keys, so the artifact keeps it)."""
        cfg = dict(cfg or {})
        names = list(order) if order else list(cfg)
        if set(names) != set(cfg):
            raise ConfigError(f"indicator order {names} does not match data.indicators {sorted(cfg)}")
        return cls([Indicator.from_config(name, cfg[name]) for name in names])

    @property
    def other(self) -> int:
        return len(self.indicators) - 1

    def event_owner(self, frame: pd.DataFrame, fields: Sequence[str]) -> np.ndarray:
        """(events, fields) → index of the indicator owning that field of that event (first match)."""
        owner = np.full((len(frame), len(fields)), self.other, dtype=np.int16)
        free = np.ones_like(owner, dtype=bool)
        for k, ind in enumerate(self.indicators[:-1]):
            if ind.events is None and not ind.fields:
                continue
            rows = (
                parsed(ind.events, f"data.indicators.{ind.name}.events").mask(frame)
                if ind.events and ind.events != "*"
                else np.ones(len(frame), dtype=bool)
            )
            cols = np.array([not ind.fields or f in ind.fields for f in fields])
            hit = free & rows[:, None] & cols[None, :]
            owner[hit] = k
            free &= ~hit
        return owner

    def event_columns(self) -> list[str]:
        """The event columns `event_owner` reads: those of the indicators' event conditions."""
        conditions = [
            parsed(ind.events, f"data.indicators.{ind.name}.events")  # (as event_owner parses them)
            for ind in self.indicators[:-1]
            if ind.events and ind.events != "*"
        ]
        return list(dict.fromkeys(c for condition in conditions for c in condition.columns))

    def name_owner(self, names: Sequence[str], kind: str) -> np.ndarray:
        """Static fields (kind="static") or aggregate columns (kind="aggregates") → owning indicator."""
        owner = np.full(len(names), self.other, dtype=np.int16)
        for j, name in enumerate(names):
            for k, ind in enumerate(self.indicators[:-1]):
                if any(fnmatch.fnmatchcase(name, pattern) for pattern in getattr(ind, kind)):
                    owner[j] = k
                    break
        return owner

    def describe(self, k: int, context: pd.DataFrame, rows: np.ndarray | None = None) -> pd.Series:
        """Indicator k in words for every row of `context` (aggregates plus customer attributes), or for the
        `rows` it selects (a mask). Only the columns its texts read are taken: copying every aggregate
        costs more than the texts."""
        ind = self.indicators[k]
        inputs = self._inputs(ind, context)
        frame = context if inputs is None else context[inputs]
        frame = frame.copy() if rows is None else frame.loc[rows]
        for name, expr in ind.values.items():
            frame[name] = parsed(expr, f"data.indicators.{ind.name}.values.{name}").evaluate(frame)
        out = pd.Series(ind.label, index=frame.index, dtype=object)
        todo = np.ones(len(frame), dtype=bool)
        for when, template in ind.text:
            sel = todo & (
                parsed(when, f"data.indicators.{ind.name}.text").mask(frame)
                if when
                else np.ones(len(frame), dtype=bool)
            )
            if sel.any():
                records = frame.loc[sel].to_dict("records")
                try:
                    out.loc[sel] = [template.format(**r) for r in records]
                except (KeyError, ValueError) as exc:
                    raise ConfigError(
                        f"data.indicators.{ind.name}.text {template!r}: cannot format ({exc})"
                    ) from exc
            todo &= ~sel
        return out

    def _inputs(self, ind: Indicator, context: pd.DataFrame) -> list[str] | None:
        """The context columns indicator `ind`'s values, conditions and texts read, in context order (a
        copy of every column costs more than the texts); None, all of them, when an expression names a
        column it cannot see (its error then lists the context's) or a text has fields other than names."""
        have = set(context.columns)
        names: list[str] = []
        for j, (name, expr) in enumerate(ind.values.items()):
            used = parsed(expr, f"data.indicators.{ind.name}.values.{name}").columns
            if any(c not in have and c not in list(ind.values)[:j] for c in used):
                return None
            names += used
        for when, template in ind.text:
            used = parsed(when, f"data.indicators.{ind.name}.text").columns if when else ()
            fields = _template_fields(template)
            if fields is None or any(c not in have and c not in ind.values for c in used):
                return None
            names += [*used, *fields]
        wanted = set(names)
        return [c for c in context.columns if c in wanted]


def _template_fields(template: str) -> list[str] | None:
    """The names a text template formats, or None when it has other fields (positions, nested specs) or
    does not parse."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return None
    names = []
    for _, field_name, spec, _ in parsed:
        if field_name is None:
            continue
        root = re.match(r"[^.\[]*", field_name).group()
        if not root.isidentifier() or (spec and "{" in spec):
            return None
        names.append(root)
    return names


@dataclass(frozen=True)
class IndicatorOwners:
    """Which indicator owns each input of a network: every (flat event, field), static field and aggregate
    (-1: none), out of `n_indicators` (`owners` below builds it for a split)."""

    event: np.ndarray
    static: np.ndarray
    aggregates: np.ndarray
    n_indicators: int


def integrated_gradients(
    model: Any,
    cat: torch.Tensor,
    num: torch.Tensor,
    lengths: torch.Tensor,
    static_cat: torch.Tensor,
    static_num: torch.Tensor,
    aggregates: torch.Tensor,
    *,
    steps: int = 16,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Attributions of the logit (B,): per event field (B, L, n_cat + n_num), per static field
    (B, n_static_cat + n_static_num) and per aggregate (B, n_agg), against a neutral reference: each
    categorical field at its mean embedding, every standardised number at 0 (its training mean), padding
    unchanged (so it gets no attribution).

    `model` has `embed`, `reference_embeddings` and `logit_from_embedded` (a ChurnNet, or an exported
    ProbabilityModel).
    """
    from captum.attr import IntegratedGradients

    with torch.no_grad():
        embedded, static_embedded = model.embed(cat, static_cat)
        ref_events, ref_static = model.reference_embeddings()
    n_e, n_s = len(embedded), len(static_embedded)
    inputs = [*(e.detach().float() for e in embedded), num, *(s.detach().float() for s in static_embedded)]
    inputs += [static_num, aggregates]
    real = (torch.arange(cat.shape[1], device=cat.device)[None, :] < lengths[:, None]).unsqueeze(-1)
    references = [real * r.detach().float() for r in ref_events] + [torch.zeros_like(num)]
    references += [r.detach().float().expand(len(lengths), -1) for r in ref_static]
    references += [torch.zeros_like(static_num), torch.zeros_like(aggregates)]
    live = [i for i, x in enumerate(inputs) if x.numel() > 0]

    def logit(*xs: torch.Tensor) -> torch.Tensor:
        full = list(inputs)
        for i, x in zip(live, xs[: len(live)], strict=True):
            full[i] = x
        n = xs[0].shape[0]
        for i in set(range(len(full))) - set(live):  # empty inputs, at the expanded batch size
            full[i] = full[i].new_zeros((n, *full[i].shape[1:]))
        return model.logit_from_embedded(
            full[:n_e], full[n_e], xs[-1], full[n_e + 1 : n_e + 1 + n_s], full[-2], full[-1]
        )

    live_inputs = tuple(inputs[i] for i in live)
    with torch.backends.cudnn.flags(enabled=False):  # cuDNN RNNs have no backward in eval mode
        attr = IntegratedGradients(logit).attribute(
            live_inputs,
            baselines=tuple(references[i] for i in live),
            additional_forward_args=(lengths,),
            n_steps=steps,
            internal_batch_size=max(1, min(len(lengths) * steps, IG_ROWS)),
        )
    full = [torch.zeros_like(x) for x in inputs]
    for i, a in zip(live, attr, strict=True):
        full[i] = a.detach()
    event = torch.cat([a.sum(-1, keepdim=True) for a in full[:n_e]] + [full[n_e]], dim=-1)
    static = torch.cat([a.sum(-1, keepdim=True) for a in full[n_e + 1 : n_e + 1 + n_s]] + [full[-2]], dim=-1)
    return (
        event.float().cpu().numpy(),
        static.reshape(len(lengths), -1).float().cpu().numpy(),
        full[-1].float().cpu().numpy(),
    )


def indicator_scores(
    owners: IndicatorOwners,
    event_attr: np.ndarray,
    positions: np.ndarray,
    static_attr: np.ndarray,
    agg_attr: np.ndarray,
) -> np.ndarray:
    """(B, K): each customer's attribution summed per indicator. `positions` (B, L) holds the row of
    `owners.event` for each padded step, -1 at padding."""
    k = owners.n_indicators
    out = np.zeros((event_attr.shape[0], k), dtype=np.float64)
    real = positions >= 0
    if real.any():
        rows, steps = np.nonzero(real)
        owner = owners.event[positions[rows, steps]]  # (n_real, F)
        flat = rows[:, None] * k + owner
        np.add.at(out.reshape(-1), flat.ravel(), event_attr[rows, steps].ravel())
    for attr, owner in ((static_attr, owners.static), (agg_attr, owners.aggregates)):
        out += sum_by_owner(attr, owner, k)
    return out


def sum_by_owner(attr: np.ndarray, owner: np.ndarray, n_indicators: int) -> np.ndarray:
    """(n, F) attributions of named inputs (static fields, aggregates) → (n, K) sums per owning indicator."""
    out = np.zeros((len(attr), n_indicators), dtype=np.float64)
    if attr.size:
        np.add.at(out, (np.arange(len(attr))[:, None], owner[None, :]), attr)
    return out


def top_drivers(
    scores: np.ndarray, catalogue: IndicatorCatalogue, context: pd.DataFrame, top_n: int = 3
) -> pd.DataFrame:
    """main_driver (indicator name) and driver_1..top_n in words: the indicators pushing risk up most
    (positive attribution; `other` is never named). Fewer than top_n such indicators leave blanks."""
    n, k = scores.shape
    ranked = scores.copy()
    ranked[:, catalogue.other] = -np.inf
    ranked[ranked <= 0] = -np.inf
    order = np.argsort(-ranked, axis=1, kind="stable")[:, :top_n]
    valid = np.take_along_axis(ranked, order, axis=1) > -np.inf
    out = pd.DataFrame(index=range(n))
    out["main_driver"] = np.where(valid[:, 0], np.array(catalogue.names, dtype=object)[order[:, 0]], "")
    context = context.reset_index(drop=True)
    for j in range(top_n):
        col = pd.Series("", index=range(n), dtype=object)
        for ind in np.unique(order[valid[:, j], j]):
            sel = valid[:, j] & (order[:, j] == ind)
            col.loc[sel] = catalogue.describe(int(ind), context, sel).to_numpy()
        out[f"driver_{j + 1}"] = col
    return out


def global_importance(scores: np.ndarray, catalogue: IndicatorCatalogue) -> pd.DataFrame:
    """Per indicator and group: share of the total mean |attribution|, and how often it is the top driver."""
    mean_abs = np.abs(scores).mean(axis=0) if len(scores) else np.zeros(scores.shape[1])
    ranked = np.where(scores > 0, scores, -np.inf)
    ranked[:, catalogue.other] = -np.inf
    top = np.argmax(ranked, axis=1)
    has = np.isfinite(ranked.max(axis=1)) if len(scores) else np.zeros(0, bool)
    top_share = np.bincount(top[has], minlength=scores.shape[1]) / max(len(scores), 1)
    frame = pd.DataFrame(
        {
            "indicator": catalogue.names,
            "group": catalogue.groups,
            "share": mean_abs / max(mean_abs.sum(), 1e-12),
            "top_driver_share": top_share,
        }
    )
    return frame.sort_values("share", ascending=False, ignore_index=True)


def match_rate(main_driver: pd.Series, truth: pd.Series, catalogue: IndicatorCatalogue) -> dict[str, Any]:
    """How often the top driver names the true mechanism, against chance: a guess drawn from the model's
    own top-driver frequencies (independent of the truth), and always naming the most common truth."""
    mapping = {i.name: i.truth for i in catalogue.indicators if i.truth}
    predicted = main_driver.map(mapping)
    keep = truth.notna() & predicted.notna()
    predicted, truth = predicted[keep].astype(str), truth[keep].astype(str)
    n = len(truth)
    if n == 0:
        return {"customers": 0, "match_rate": math.nan, "chance": math.nan, "majority": math.nan}
    p_pred = predicted.value_counts(normalize=True)
    p_true = truth.value_counts(normalize=True)
    chance = float((p_pred * p_true.reindex(p_pred.index).fillna(0)).sum())
    per_driver = (
        pd.DataFrame({"truth": truth.to_numpy(), "hit": (predicted == truth).to_numpy()})
        .groupby("truth")["hit"]
        .agg(["size", "mean"])
    )
    return {
        "customers": n,
        "match_rate": float((predicted == truth).mean()),
        "chance": chance,
        "majority": float(p_true.max()),
        "per_driver": {
            str(k): {"customers": int(v["size"]), "match_rate": float(v["mean"])}
            for k, v in per_driver.iterrows()
        },
    }


def event_positions(offsets: np.ndarray, rows: np.ndarray, width: int) -> np.ndarray:
    """(B, width): the flat event index at each padded step of `rows` (pad_batch's layout), -1 at padding."""
    lengths = offsets[rows + 1] - offsets[rows]
    steps = np.arange(width)[None, :]
    return np.where(steps < lengths[:, None], offsets[rows][:, None] + steps, -1)


def explain_sequences(
    model: Any,
    seqs: Any,
    owners: IndicatorOwners,
    aggregates: np.ndarray | None,
    *,
    batch_size: int = 256,
    steps: int = 16,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """(n, K) indicator attributions for encoded sequences (`event_owner` has one row per flat event)."""

    n = len(seqs)
    out = np.zeros((n, owners.n_indicators), dtype=np.float64)
    order = np.argsort(-seqs.lengths, kind="stable")
    device = torch.device(device)
    # the caller's autocast, for the worker threads (autocast is per thread)
    mixed, dtype = torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type)

    def explain(start: int) -> None:
        rows = order[start : start + batch_size]
        b = pad_batch(seqs, rows, aggregates).to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=mixed):
            ev, st, ag = integrated_gradients(
                model, b.cat, b.num, b.lengths, b.static_cat, b.static_num, b.aggregates, steps=steps
            )
        positions = event_positions(seqs.offsets, rows, b.cat.shape[1])
        out[rows] = indicator_scores(owners, ev, positions, st, ag)

    starts = range(0, n, batch_size)
    with threads_as_workers(len(starts), device) as workers:
        if workers == 1:
            for start in starts:
                explain(start)
        else:  # batches side by side, a thread each
            with ThreadPoolExecutor(workers, thread_name_prefix="churnwatch-drivers") as pool:
                list(pool.map(explain, starts))
    return out


def context_frame(
    table: AggregateTable,
    customers: pd.DataFrame | None,
    ids: np.ndarray,
    attributes: Sequence[str] = (),
) -> pd.DataFrame:
    """A row per customer with the aggregates and the customer attributes, for the driver texts. An
    attribute the customer has no value for reads "unknown", also when there is no customers table at all
    (`attributes` names those the model was trained with)."""
    frame = table.to_frame().astype(np.float64)
    if customers is not None:
        attrs = customers.reindex(np.asarray(ids)).reset_index(drop=True)
        for col in attrs.columns:
            if col not in frame:
                frame[col] = attrs[col].astype(object).where(attrs[col].notna(), "unknown").astype(str)
    for col in attributes:
        if col not in frame:
            frame[col] = "unknown"
    return frame


def owners(
    catalogue: IndicatorCatalogue,
    log_: EventLog,
    snaps: Snapshots,
    encoder: SequenceEncoder,
    aggregate_names: list[str],
) -> IndicatorOwners:
    """Which indicator owns each (flat event, field), static field and aggregate input of a network.

    The flat events are the encoder's steps for `snaps` (`kept_steps`, the rule its transform follows), so
    owner row k belongs to encoded step k."""
    # a visit's fields are its representative (mode) values; its first line stands for it here. Only the
    # columns the indicators' event conditions read: a log from the cache converts no others
    first = kept_steps(log_, snaps, encoder.window).first
    frame = log_.select([CUSTOMER_ID, *catalogue.event_columns()], first)
    return IndicatorOwners(
        event=catalogue.event_owner(frame, [*encoder.cat_names, *encoder.num_names]),
        static=catalogue.name_owner([*encoder.static_cat_names, *encoder.static_num_names], "static"),
        aggregates=catalogue.name_owner(aggregate_names, "aggregates"),
        n_indicators=len(catalogue.names),
    )
