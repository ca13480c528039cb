"""Every numeric option of every command and the rule it must meet, in one table.

A bad number does not fail where it is set: `chunk_customers=0` scored everyone NaN, `batch_size=-1` was
blamed on the model's weights, `num_shards=0` ran a full job, `block_rows=0` ended in a traceback. The CLI
checks a composed config against this table before the run dir is used (`check_config`), and the Python
entry points check their arguments against the same table (`check_values`), so both refuse a bad value up
front with one line naming the key, the value and the rule.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from churnwatch.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """A number (an integer unless `integer=False`) within bounds, or null (`null`), or one of `words`."""

    low: float | None = None
    high: float | None = None
    integer: bool = True
    null: bool = False
    low_open: bool = False
    high_open: bool = False
    words: tuple[str, ...] = ()

    def holds(self, value: Any) -> bool:
        if value is None:
            return self.null
        if isinstance(value, str):
            return value in self.words
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if not isinstance(value, numbers.Integral) and not math.isfinite(value):
            return False
        if self.integer and value != int(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def text(self) -> str:
        """The rule in words, e.g. 'null or an integer ≥ 1', 'a number in (0, 1]'."""
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            bounds = f" in {'(' if self.low_open else '['}{_show(self.low)}, {_show(self.high)}"
            bounds += ")" if self.high_open else "]"
        elif self.low is not None:
            bounds = f" {'>' if self.low_open else '≥'} {_show(self.low)}"
        elif self.high is not None:
            bounds = f" {'<' if self.high_open else '≤'} {_show(self.high)}"
        else:
            bounds = ""
        choices = [*(repr(w) for w in self.words), *(["null"] if self.null else [])]
        return " or ".join([*choices, kind + bounds])


COUNT = Rule(low=1)  # a size or count: at least one
OPTIONAL_COUNT = Rule(low=1, null=True)
NON_NEGATIVE = Rule(low=0)
SEED = Rule(low=0, high=2**32 - 1)  # numpy's range
SHARE = Rule(low=0, high=1, integer=False, low_open=True)  # (0, 1]
PROBABILITY = Rule(low=0, high=1, integer=False)  # [0, 1]
POSITIVE = Rule(low=0, integer=False, low_open=True)
NON_NEGATIVE_NUMBER = Rule(low=0, integer=False)

RULES: dict[str, Rule] = {
    # score, merge-scores (and the Python API: score_file, Scorer, merge_shards)
    "batch_size": OPTIONAL_COUNT,
    "chunk_customers": COUNT,
    "part_events": COUNT,
    "block_rows": COUNT,
    "show_top": NON_NEGATIVE,
    "num_shards": OPTIONAL_COUNT,
    "shard_index": NON_NEGATIVE,  # and < num_shards (`_cross`)
    "value_days": COUNT,
    "drivers.top_n": COUNT,
    "drivers.steps": COUNT,
    "drivers.batch_size": OPTIONAL_COUNT,
    "ray.workers": OPTIONAL_COUNT,
    "ray.cpus_per_worker": COUNT,
    "ray.gpus_per_worker": NON_NEGATIVE_NUMBER,
    # serve
    "port": Rule(low=0, high=65535),
    "workers": COUNT,
    "batching.max_customers": COUNT,
    "batching.max_wait_ms": NON_NEGATIVE_NUMBER,
    "limits.max_body_mb": POSITIVE,
    "limits.max_rows": COUNT,
    "limits.max_customers": COUNT,
    "reload_seconds": NON_NEGATIVE_NUMBER,
    # monitor: warn ≤ retrain (`_cross`)
    "thresholds.*.warn": Rule(low=0, integer=False, null=True),
    "thresholds.*.retrain": Rule(low=0, integer=False, null=True),
    # robustness (and run_robustness's PerturbationConfig)
    "perturbations.dropout[*]": Rule(low=0, high=1, integer=False, high_open=True),
    "perturbations.late_days[*]": NON_NEGATIVE,
    "perturbations.noise_sigma[*]": NON_NEGATIVE_NUMBER,
    "perturbations.blank_share[*]": PROBABILITY,
    "perturbations.unseen_share[*]": PROBABILITY,
    "perturbations.duplicate_share[*]": PROBABILITY,
    "perturbations.as_of_shift_days[*]": Rule(),
    # make-synthetic, curves, leaderboard
    "n_customers": COUNT,
    "extra_lines_per_purchase": NON_NEGATIVE_NUMBER,
    "data.generate.extra_lines_per_purchase": NON_NEGATIVE_NUMBER,
    "seed": SEED,
    "seeds[*]": SEED,
    "fractions[*]": SHARE,
    # train (and everything built on its config: prepare, curves, leaderboard)
    "insights.steps": COUNT,
    "insights.batch_size": COUNT,
    "cv.folds": Rule(low=2, null=True),
    "recommender.offers": COUNT,
    "recommender.k": COUNT,
    "recommender.min_count": COUNT,
    "recommender.half_life_days": Rule(low=0, integer=False, low_open=True, null=True),
    "recommender.exclude_days": Rule(low=0, integer=False, null=True),
    "recommender.params.k": COUNT,
    "recommender.params.own": NON_NEGATIVE_NUMBER,
    "recommender.params.shrinkage": NON_NEGATIVE_NUMBER,
    "recommender.params.factors": COUNT,
    "recommender.params.iterations": COUNT,
    "recommender.params.alpha": POSITIVE,
    "recommender.params.regularization": NON_NEGATIVE_NUMBER,
    "recommender.params.seed": SEED,
    "data.generate.n_customers": COUNT,
    "data.generate.seed": SEED,
    "data.seed": SEED,
    "data.horizon_days": COUNT,
    "data.lookback_days": OPTIONAL_COUNT,
    "data.n_snapshots": COUNT,
    "data.snapshot_every_days": COUNT,
    "data.val_fraction": Rule(low=0, high=1, integer=False, low_open=True, high_open=True),
    "data.folds": Rule(low=2, null=True),
    "data.fold": Rule(low=0, null=True),
    "data.train_fraction": Rule(low=0, high=1, integer=False, low_open=True, null=True),
    "data.max_len": COUNT,
    "data.max_span_days": Rule(low=0, integer=False, low_open=True, null=True),
    "data.visits.gap_minutes": Rule(low=0, integer=False, low_open=True, null=True),
    "model.tte.weight": Rule(low=0, integer=False),
    "model.params.min_fit_rows": COUNT,
    "model.tte.bins[*]": Rule(low=0, integer=False),
    "data.vocab.min_count": COUNT,
    "data.vocab.max_size": COUNT,
    "data.aggregates.windows[*]": COUNT,
    "data.aggregates.mix_top_k": COUNT,
    "data.aggregates.ema_half_lives[*]": POSITIVE,
    "data.aggregates.recent_days": COUNT,
    "data.cache.max_entries": OPTIONAL_COUNT,
    "data.numeric[*].min": Rule(integer=False, null=True),
    "data.numeric[*].max": Rule(integer=False, null=True),
    "data.numeric[*].fill": Rule(integer=False, null=True),
    "data.batch_size": COUNT,
    "data.eval_batch_size": COUNT,
    "data.num_workers": NON_NEGATIVE,
    "data.device_gather_fraction": SHARE,
    "trainer.max_epochs": COUNT,
    "trainer.num_nodes": COUNT,
    "trainer.gradient_clip_val": Rule(low=0, integer=False, null=True),
    "trainer.log_every_n_steps": COUNT,
    "trainer.num_sanity_val_steps": Rule(low=-1),
    "model.net.d_model": COUNT,
    "model.net.hidden": COUNT,
    "model.net.num_layers": COUNT,
    "model.net.n_heads": COUNT,
    "model.net.head_hidden": COUNT,
    "model.net.dropout": Rule(low=0, high=1, integer=False, high_open=True),
    "model.loss.pos_weight": Rule(low=0, integer=False, low_open=True, words=("auto",)),
    "model.loss.focal_gamma": NON_NEGATIVE_NUMBER,
    "model.loss.focal_alpha": PROBABILITY,
    "model.optimizer.lr": POSITIVE,
    "model.optimizer.weight_decay": NON_NEGATIVE_NUMBER,
    "model.scheduler.warmup_steps": NON_NEGATIVE,
    "model.scheduler.patience": NON_NEGATIVE,
    "model.scheduler.factor": Rule(low=0, high=1, integer=False, low_open=True, high_open=True),
    "model.nonfinite.max_skipped_fraction": PROBABILITY,
    "model.params.n_estimators": COUNT,
    "model.params.max_depth": Rule(low=-1, null=True),  # LightGBM: -1 (or 0) is no limit; sklearn: null
    "model.params.num_leaves": Rule(low=2),
    "model.params.min_samples_leaf": COUNT,
    "model.params.min_child_samples": NON_NEGATIVE,
    "model.params.learning_rate": POSITIVE,
    "model.params.subsample": SHARE,
    "model.params.subsample_freq": NON_NEGATIVE,
    "model.params.colsample_bytree": SHARE,
    "model.params.reg_lambda": NON_NEGATIVE_NUMBER,
    "model.params.C": POSITIVE,
    "model.params.penalizer": NON_NEGATIVE_NUMBER,
    "model.params.horizon_days": COUNT,
    "callbacks.early_stopping.patience": NON_NEGATIVE,
    "callbacks.model_checkpoint.save_top_k": Rule(low=-1),
    # the thresholds group (train, ensemble)
    "thresholds.target_precision": SHARE,
    "thresholds.top_fraction": SHARE,
    "thresholds.top_k": COUNT,
    "thresholds.probability": PROBABILITY,
    "thresholds.high_fraction": SHARE,
    "thresholds.medium_fraction": SHARE,
    "thresholds.high_k": COUNT,
    "thresholds.medium_k": COUNT,
    "thresholds.high_precision": SHARE,
    "thresholds.medium_precision": SHARE,
    "thresholds.high_probability": PROBABILITY,
    "thresholds.medium_probability": PROBABILITY,
    "thresholds.population": OPTIONAL_COUNT,
}


def _pattern(key: str) -> re.Pattern[str]:
    """A table key as a regex: `*` stands for one key or list index."""
    return re.compile(re.escape(key).replace(r"\*", r"[^.\[\]]+") + "$")


_MATCHERS = [(_pattern(key), rule) for key, rule in RULES.items()]


def rule_of(key: str) -> Rule | None:
    """The rule of a dotted key (`data.aggregates.windows[0]`), or None for a key without one."""
    return next((rule for pattern, rule in _MATCHERS if pattern.match(key)), None)


def _show(value: Any) -> str:
    """A value as it is written on the command line."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def problems(values: Mapping[str, Any]) -> list[str]:
    """`key=value: must be ...` for each value (by dotted key) that breaks its rule or a rule between keys."""
    found = []
    for key, value in values.items():
        rule = rule_of(key)
        if rule is not None and not rule.holds(value):
            found.append(f"{key}={_show(value)}: must be {rule.text()}")
    return found or _cross(values)


def _cross(values: Mapping[str, Any]) -> list[str]:
    """Rules between keys, for values that each meet their own rule."""
    found = []
    shards, index = values.get("num_shards"), values.get("shard_index")
    if shards is not None and index is not None and index >= shards:
        found.append(f"shard_index={_show(index)}: must be < num_shards={_show(shards)}")
    for key, warn in values.items():
        if key.startswith("thresholds.") and key.endswith(".warn"):
            upper = key.removesuffix(".warn") + ".retrain"
            retrain = values.get(upper)
            if warn is not None and retrain is not None and warn > retrain:
                found.append(f"{key}={_show(warn)}: must be ≤ {upper}={_show(retrain)}")
    return found


def check_values(values: Mapping[str, Any]) -> None:
    """Refuse, in one ConfigError line, the values (by dotted key) that break their rules."""
    found = problems(values)
    if found:
        raise ConfigError("; ".join(found))


def config_values(cfg: DictConfig) -> dict[str, Any]:
    """The values of `cfg` that have a rule, by dotted key (Hydra's own settings, `???` and copies of
    another key, `${key}`, skipped; only these values resolved: the rest may name what exists only once
    the run starts)."""
    return dict(_walk(cfg, ""))


_COPY = re.compile(r"\$\{[\w.]+\}$")


def _walk(node: DictConfig | ListConfig, prefix: str) -> Iterator[tuple[str, Any]]:
    items = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in items:
        name = f"{prefix}[{key}]" if isinstance(node, ListConfig) else f"{prefix}{'.' if prefix else ''}{key}"
        child = node._get_node(key)
        interpolated = OmegaConf.is_interpolation(node, key)
        if name == "hydra" or OmegaConf.is_missing(node, key) or interpolated and _COPY.match(child._value()):
            continue
        if isinstance(child, DictConfig | ListConfig) and not interpolated:
            yield from _walk(child, name)
        elif rule_of(name) is not None:
            yield name, node[key]


def check_config(cfg: DictConfig) -> None:
    """Refuse a composed config whose numeric options break their rules (one ConfigError line)."""
    check_values(config_values(cfg))
