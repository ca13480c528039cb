"""Where the Hydra configs are, and composing one outside a Hydra run (notebooks, the Python API, tests).

The repository's top-level `conf/` is the one source. A wheel carries a copy as `churnwatch/conf` (the
build force-includes it), so an installed churnwatch finds its configs without a checkout; an editable
install or a checkout on PYTHONPATH reads `conf/` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from churnwatch.config.schema import register
from churnwatch.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parents[1]
register()  # the typed schemas the YAML files build on (config/schema.py)


def config_dir() -> Path:
    """The Hydra config directory: the installed package's copy, else the checkout's `conf/`."""
    for candidate in (_PACKAGE / "conf", _PACKAGE.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise ConfigError(
        f"no churnwatch configs next to {_PACKAGE} (conf/train.yaml in the package or the checkout): "
        "reinstall churnwatch"
    )


def compose(
    config_name: str = "train", overrides: Sequence[str] = (), output_dir: str | Path | None = None
) -> DictConfig:
    """The config a command would run with, e.g. `compose("train", ["model=gru", "trainer.max_epochs=3"])`:
    the same files and overrides as `churnwatch <command> ...`, with `paths.output_dir` set to `output_dir`
    (default: an override of `paths.output_dir`, else the run dir the command would use, e.g.
    checkpoints/train/<timestamp>). Keys marked ??? stay missing until set; Hydra's own settings are
    dropped."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name=config_name):
        cfg = hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        if "paths" in cfg and output_dir is not None:
            cfg.paths.output_dir = str(Path(output_dir).resolve())
        elif "paths" in cfg and "${hydra:" in str(OmegaConf.to_container(cfg.paths)["output_dir"]):
            # Hydra's runtime dir, which only a Hydra run sets: the run dir that run would get
            cfg.paths.output_dir = str(Path(str(OmegaConf.select(cfg, "hydra.run.dir"))).resolve())
        del cfg["hydra"]
    return cfg
