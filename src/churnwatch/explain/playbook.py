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
        action = np.full(len(frame), "no_action", dtype=object)
        todo = np.ones(len(frame), dtype=bool)
        for rule in self.rules:
            hit = todo.copy()
            for column, values in rule.when:
                hit &= frame[column].astype(str).isin(values).to_numpy() if column in frame else False
            action[hit] = rule.action
            todo &= ~hit
        return pd.Series(action, index=frame.index, name="action")
