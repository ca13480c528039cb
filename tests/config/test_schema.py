"""The typed configs (config/schema.py): one copy of each default, misspelt keys and wrong types refused
when the config is composed, and the code's defaults equal to the composed config's."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from churnwatch.config.compose import compose
from churnwatch.config.schema import DriversConfig, NetworkModelConfig, ThresholdsConfig, typed
from churnwatch.errors import ConfigError
from churnwatch.models.module import ChurnModule
from churnwatch.models.thresholds import ThresholdRule
from tests.helpers import REPO

FEATURES = {
    "cat_cardinalities": [4, 5],
    "n_num": 2,
    "time_index": [0, 1],
    "static_cat_cardinalities": [],
    "n_static_num": 0,
}


@pytest.mark.parametrize("override", ["model.net.hiden=32", "model.optimiser.lr=0.1", "thresholds.top_kk=5"])
def test_a_misspelt_key_fails_when_composed(override):
    with pytest.raises(ConfigCompositionException):
        compose("train", [override])


@pytest.mark.parametrize("override", ["model.net.hidden=many", "thresholds.top_k=abc", "model.compile=maybe"])
def test_a_value_of_the_wrong_type_fails_when_composed(override):
    with pytest.raises(ConfigCompositionException):
        compose("train", [override])


def test_a_module_built_from_no_settings_has_the_composed_configs_values():
    """ChurnModule's defaults are the schema's, so they cannot drift from what `model=lstm` composes."""
    composed = OmegaConf.to_container(compose("train", ["model=lstm"]).model, resolve=True)
    module = ChurnModule(features=FEATURES, net={})
    assert module.loss_cfg == composed["loss"]
    assert module.opt_cfg == composed["optimizer"]
    assert module.sched_cfg == composed["scheduler"]
    assert module.nonfinite == composed["nonfinite"]
    assert module.tte == composed["tte"]
    assert module.net.sequence.out_dim == composed["net"]["hidden"]  # the RNN's hidden size


def test_the_yaml_files_keep_only_overrides():
    """conf/model/lstm.yaml and conf/thresholds/default.yaml add nothing to the schema's defaults: the
    composed blocks are the dataclasses' own values (lstm's name aside)."""
    cfg = compose("train", ["model=lstm", "thresholds=default"])
    assert OmegaConf.to_container(cfg.model, resolve=True) == asdict(NetworkModelConfig(name="lstm"))
    assert OmegaConf.to_container(cfg.thresholds, resolve=True) == asdict(ThresholdsConfig())
    assert ThresholdRule.from_config(cfg.thresholds) == ThresholdRule()


def test_typed_names_the_block_and_the_unknown_key():
    with pytest.raises(ConfigError, match=r"model.loss: unknown keys \['kindd'\]"):
        typed(type(NetworkModelConfig().loss), {"kindd": "bce"}, "model.loss")


def test_a_misspelt_data_key_fails_when_composed():
    with pytest.raises(ConfigCompositionException):
        compose("train", ["data.max_lenn=64"])
    with pytest.raises(ConfigCompositionException):
        compose("train", ["data.visits.gap_minute=30"])


@pytest.mark.parametrize("name", ["synthetic", "online_retail"])
def test_data_yaml_files_set_only_what_differs_from_the_schema(name):
    """A data set's file repeats no default of DataConfig (the one copy of each default)."""
    from churnwatch.config.schema import DataConfig

    text = yaml.safe_load((REPO / "conf" / "data" / f"{name}.yaml").read_text())
    defaults = asdict(DataConfig())
    parent = {} if name == "synthetic" else yaml.safe_load((REPO / "conf/data/synthetic.yaml").read_text())
    own = {k: v for k, v in text.items() if k != "defaults" and k not in parent}
    repeated = [k for k, v in own.items() if k in defaults and v == defaults[k]]
    assert repeated == []


def test_the_cache_key_covers_exactly_the_encoding_concerns():
    """The cache's key reads the contract, validation, snapshot and encoding keys of the composed block and
    nothing else: paths, the cache, batch serving and drivers change no encoding."""
    from churnwatch.config.schema import ENCODES, keys_of
    from churnwatch.pipeline.cache_key import encoding_config

    data = OmegaConf.to_container(compose("train").data, resolve=True)
    assert set(encoding_config(data)) == keys_of(*ENCODES)
    assert keys_of(*ENCODES) >= {"max_len", "policy", "horizon_days", "categorical", "visits"}
    assert not keys_of(*ENCODES) & {"batch_size", "cache", "events_path", "indicators", "truth_path"}


def test_the_score_block_is_typed_and_its_yaml_sets_only_groups():
    """conf/score.yaml builds on ScoreConfig: a misspelt or mistyped key fails when composed, the file sets
    no key of its own, and the Python job's defaults are the composed command's."""
    from dataclasses import fields

    from churnwatch.jobs.score import ScoreJob

    assert set(yaml.safe_load((REPO / "conf" / "score.yaml").read_text())) == {"defaults"}
    for bad in ("drivers.topn=3", "value_days=ninety", "chunk_customer=10"):
        with pytest.raises(ConfigCompositionException):
            compose("score", ["model_path=m.pt", bad])
    required = dict(model_path="m.pt", events_path="e.parquet", output_path="o.parquet")
    composed = ScoreJob.from_config(compose("score", [f"{k}={v}" for k, v in required.items()]))
    by_hand = ScoreJob(**required)
    differ = [f.name for f in fields(ScoreJob) if getattr(composed, f.name) != getattr(by_hand, f.name)]
    assert differ == ["playbook"]  # the command adds the default playbook group; Python's default is none
    assert composed.drivers == by_hand.drivers == DriversConfig()
    assert ScoreJob.from_config(
        compose(
            "score",
            [*(f"{k}={v}" for k, v in required.items()), "num_shards=4", "shard_index=2", "drivers.top_n=2"],
        )
    ).shard == (4, 2)


def test_a_partial_cache_block_takes_the_schema_defaults_and_no_block_is_off(tmp_path):
    from churnwatch.config.schema import CacheConfig
    from churnwatch.pipeline.cache import CacheSettings

    partial = CacheSettings.from_config({"dir": str(tmp_path)})
    assert partial.enabled is CacheConfig.enabled and partial.max_entries == CacheConfig.max_entries
    assert partial.dir == tmp_path.resolve() and partial.content_hash == CacheConfig.content_hash
    assert not CacheSettings.from_config(None).enabled
    with pytest.raises(ConfigError, match=r"data.cache: unknown keys \['enabeld'\]"):
        CacheSettings.from_config({"enabeld": True})
    with pytest.raises(ConfigError, match="data.cache.enabled is true but data.cache.dir is not set"):
        CacheSettings.from_config({"enabled": True})  # the default dir needs paths.cache_dir resolved
