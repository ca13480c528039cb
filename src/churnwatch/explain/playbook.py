"""Retention playbook: (risk tier, main driver, segment, the first offer's category) → a suggested action,
by first matching rule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from churnwatch.errors import ConfigError

CONDITIONS = {
    "tier": "risk_tier",
    "driver": "main_driver",
    "segment": "rfm_segment",
    "offer_category": "offer_category",  # a model with offers (docs/RECOMMENDATIONS.md)
}


@dataclass(frozen=True)
class Rule:
    action: str
    when: tuple[tuple[str, tuple[str, ...]], ...]
    """(output column, accepted values) pairs; all must hold."""


class Playbook:
    def __init__(self, rules: Sequence[Rule]):
        if not rules:
            raise ConfigError("playbook.rules is empty: give at least a final {action: no_action}")
        self.rules = list(rules)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> Playbook:
        rules = []
        for i, spec in enumerate((cfg or {}).get("rules") or []):
            spec = dict(spec)
            if "action" not in spec:
                raise ConfigError(f"playbook.rules[{i}] has no action: {spec}")
            unknown = set(spec) - {"action", *CONDITIONS}
            if unknown:
                raise ConfigError(
                    f"playbook.rules[{i}]: unknown conditions {sorted(unknown)} (use {sorted(CONDITIONS)})"
                )
            when = tuple(
                (CONDITIONS[k], tuple(map(str, [v] if isinstance(v, str) else v)))
                for k, v in spec.items()
                if k != "action"
            )
            rules.append(Rule(str(spec["action"]), when))
        return cls(rules)

    def assign(self, frame: pd.DataFrame) -> pd.Series:
        """The action per row of a scoring output; rows no rule matches get 'no_action'."""
        return pd.Series(self.actions(frame, len(frame)), index=frame.index, name="action")

    def actions(self, columns: Mapping[str, Any], n: int) -> np.ndarray:
        """`assign` on `n` rows given as columns (a frame, or arrays by name, what ranking builds before
        it frames its output once): object array of actions."""
        action = np.full(n, "no_action", dtype=object)
        todo = np.ones(n, dtype=bool)
        text: dict[str, pd.Series] = {}  # each condition's column as text, once
        for rule in self.rules:
            hit = todo.copy()
            for column, values in rule.when:
                if column not in columns:
                    hit[:] = False
                    break
                if column not in text:
                    text[column] = pd.Series(columns[column]).astype(str)
                hit &= _isin(text[column], values)
            action[hit] = rule.action
            todo &= ~hit
        return action


def _isin(text: pd.Series, values: tuple[str, ...]) -> np.ndarray:
    """`text.isin(values)`; a short column (a request's customers) by a Python set, cheaper than a hash
    table built per call."""
    if len(text) > 1024:
        return text.isin(values).to_numpy()
    accepted = set(values)
    return np.fromiter((v in accepted for v in text), dtype=bool, count=len(text))
