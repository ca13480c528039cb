"""What every `churnwatch <command>` shares: Hydra with the package's configs, `--help` that lists the
command's own keys with their comments, one line (exit 2) for a missing key, a missing optional package
or any other user error.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import hydra
import yaml
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from churnwatch.cli.errors import composition_error, one_line, one_line_errors, user_error_exit
from churnwatch.config.compose import compose, config_dir
from churnwatch.config.options import check_config
from churnwatch.config.schema import PRIMARY, default_of, help_of, primary_schema
from churnwatch.errors import ConfigError

TaskFunction = Callable[[DictConfig], Any]
HIDDEN_GROUPS = ("hydra", "paths")  # Hydra's own settings, and where files go (paths.* keys still work)
OPTIONAL = (  # (override key, option or "" for any, import name(s), extra): checked before Hydra starts
    ("hparams_search", "", ("hydra_plugins.hydra_optuna_sweeper",), "sweep"),
    ("hydra/sweeper", "optuna", ("hydra_plugins.hydra_optuna_sweeper",), "sweep"),
    ("hydra/launcher", "local", ("hydra_plugins.hydra_submitit_launcher",), "cluster"),
    ("hydra/launcher", "slurm", ("hydra_plugins.hydra_submitit_launcher",), "cluster"),
    ("hydra/launcher", "ray", ("hydra_plugins.hydra_ray_launcher",), "ray"),
    ("logger", "mlflow", ("mlflow",), "mlflow"),
    ("logger", "wandb", ("wandb",), "wandb"),
    ("logger", "tensorboard", ("tensorboard", "tensorboardX"), "tensorboard"),
)


def command_name(config_name: str) -> str:
    """`churnwatch make-synthetic` for the config make_synthetic.yaml."""
    return f"churnwatch {config_name.replace('_', '-')}"


def command(config_name: str) -> Callable[[TaskFunction], Callable[..., Any]]:
    """Turn a task function into the command's `main()`: `@hydra.main` on the package's configs, with user
    errors as one line, `--help` from the config file, and optional packages checked before the run."""

    def decorate(task: TaskFunction) -> Callable[..., Any]:
        name = command_name(config_name)
        run = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)(
            one_line_errors(name)(checked(task))
        )

        @functools.wraps(task)
        def main(cfg: DictConfig | None = None) -> Any:
            if cfg is not None:  # a composed config runs as is (Hydra's pass-through, for tests)
                return run(cfg)
            args = sys.argv[1:]
            if "--help" in args or "-h" in args:
                print(command_help(config_name, task.__doc__))
                return None
            check_optional(name, args)
            check_overrides(config_name, name, args)
            return run()

        return main

    return decorate


def checked(task: TaskFunction) -> TaskFunction:
    """The task, after the config's numeric options are checked (`churnwatch.config.options`): what the
    run-start callback (`RequireKeys`) cannot see, a composed config passed in or a sweep's own values, is
    refused here in the same one line."""

    @functools.wraps(task)
    def run_checked(cfg: DictConfig) -> Any:
        check_config(cfg)
        return task(cfg)

    return run_checked


def check_optional(name: str, args: list[str]) -> None:
    """A config group option that needs an optional package fails here, in one line naming the extra to
    install, instead of deep inside Hydra or Lightning."""
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        for group, option, modules, extra in OPTIONAL:
            if key != group or not value or (option and option not in value):
                continue
            if not any(_find(m) for m in modules):
                user_error_exit(
                    name,
                    f"{arg} needs the optional package(s) {' or '.join(modules)}: pip install "
                    f"'churnwatch[{extra}]'",
                )


def check_overrides(config_name: str, name: str, args: list[str]) -> None:
    """Compose the command line's config once before Hydra does, so that an override the typed configs
    refuse (`data.max_lenn=3`, `block_rows=1.5`, `model=lstmm`) ends in one line naming it instead of
    Hydra's multi-line report. Sweeps (-m) are left to Hydra."""
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    if not overrides or {"-m", "--multirun"} & set(args) or any(a.startswith("-c") for a in args):
        return
    try:
        compose(config_name, overrides)
    except HydraException as exc:
        line = composition_error(exc)
        if line is not None:
            user_error_exit(name, f"{line} ({name} --help lists every key)")


def require_packages(name: str, modules: tuple[str, ...], extra: str) -> None:
    """A command that needs an optional extra stops in one line naming it when one of its packages is
    missing, instead of an ImportError's traceback."""
    missing = [m for m in modules if not _find(m)]
    if missing:
        user_error_exit(
            name, f"needs the optional package(s) {', '.join(missing)}: pip install 'churnwatch[{extra}]'"
        )


def _find(module: str) -> bool:
    """Whether `module` is importable, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class RequireKeys(Callback):
    """Hydra callback (conf/hydra/default.yaml): a required key (`???`) left unset, or a numeric option
    that breaks its rule (`churnwatch.config.options`), ends the command with one line naming it, before Hydra
    creates a run directory."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _require(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _require(config)


def missing_keys(node: DictConfig | ListConfig, prefix: str = "") -> list[str]:
    """Keys left `???` under `node` (Hydra's own settings skipped), without resolving interpolations (a run
    dir that names a missing key must not fail before the key is named)."""
    found = []
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        name = f"{prefix}{key}"
        if name == "hydra" or OmegaConf.is_interpolation(node, key):
            continue
        if OmegaConf.is_missing(node, key):
            found.append(name)
        elif isinstance(child := node._get_node(key), DictConfig | ListConfig):
            found += missing_keys(child, f"{name}.")
    return found


def _require(config: DictConfig) -> None:
    missing = missing_keys(config)
    name = command_name(str(OmegaConf.select(config, "hydra.job.config_name") or "churnwatch"))
    if missing:
        example = " ".join(f"{k}=..." for k in missing)
        user_error_exit(
            name,
            f"missing required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}: e.g. {name} "
            f"{example} ({name} --help lists every key)",
        )
    try:
        check_config(config)
    except ConfigError as exc:
        user_error_exit(name, one_line(exc))


def command_help(config_name: str, doc: str | None = None) -> str:
    """The command's usage, its keys with the config file's own comments, and the config groups it uses
    with their options: what `churnwatch <command> --help` prints."""
    conf = config_dir()
    text = (conf / f"{config_name}.yaml").read_text()
    name = command_name(config_name)
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln and not ln.startswith("#")), len(lines))
    usage = [ln.lstrip("# ") for ln in lines[:start] if ln.lstrip("# ").startswith(f"{name} ")]
    usage = usage or [f"{name} [key=value ...]"]
    out = [f"usage: {usage[0]}", *(f"       {u}" for u in usage[1:]), ""]
    if doc:
        out += [doc.strip().splitlines()[0], ""]
    loaded = yaml.safe_load(text) or {}
    defaults = loaded.get("defaults") or []
    keys = _keys_section(lines[start:])
    schema = primary_schema(defaults)
    if schema is not None:  # the keys, defaults and help of the config's schema, with the file's values
        grouped = {
            str(next(iter(d))).removeprefix("override ").strip("/") for d in defaults if isinstance(d, dict)
        }
        keys = _schema_keys(schema, loaded, skip=grouped)
    out += [f"keys ({conf / (config_name + '.yaml')}; ??? = required; set any with key=value):", *keys]
    if schema is not None:
        out += [f"  (defaults and meanings: {schema.__name__} in churnwatch/config/schema.py)"]
    groups, parents = [], []
    for entry in defaults:
        if isinstance(entry, str) and entry != "_self_" and entry not in PRIMARY:
            parents.append(entry)
        elif isinstance(entry, dict):
            group, option = next(iter(entry.items()))
            group = str(group).removeprefix("override ").strip("/")
            if group.split("/")[0] not in HIDDEN_GROUPS and (conf / group).is_dir():
                options = sorted(p.stem for p in (conf / group).glob("*.yaml"))
                groups.append(f"  {group}={option}  (options: {', '.join(options)})")
    for parent in parents:
        out += ["", f"and every key and group of `{command_name(parent)}` ({command_name(parent)} --help)"]
    if groups:
        out += ["", "config groups (group=option):", *groups]
    out += [
        "",
        "Hydra: --cfg job prints the composed config, -m key=a,b runs a sweep, --hydra-help lists Hydra's "
        "own options.",
    ]
    return "\n".join(out)


HELP_COLUMN, HELP_WIDTH = 28, 110


def _schema_keys(schema: type, values: dict[str, Any], skip: set[str], indent: str = "  ") -> list[str]:
    """`key: value  # help` for each key of a schema, nested schemas indented, the file's values first."""
    out = []
    for f in dataclasses.fields(schema):
        if f.name in skip:
            continue
        value = values.get(f.name, default_of(schema, f.name))
        nested = dataclasses.is_dataclass(value)
        head = f"{indent}{f.name}:" + ("" if nested else f" {_yaml_value(value)}")
        first, *rest = _comment(head, help_of(schema, f.name))
        out += [head + first, *rest]
        if nested:
            out += _schema_keys(type(value), dataclasses.asdict(value), set(), indent + "  ")
    return out


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | dict):
        return yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return str(value)


def _comment(head: str, text: str | None) -> list[str]:
    """The help text as a comment after `head`, wrapped onto aligned comment lines."""
    if not text:
        return [""]
    pad = max(HELP_COLUMN - len(head), 1)
    lines = textwrap.wrap(text, HELP_WIDTH - max(HELP_COLUMN, len(head) + 1) - 2)
    return [" " * pad + "# " + lines[0], *(" " * HELP_COLUMN + "# " + ln for ln in lines[1:])]


def _keys_section(lines: list[str]) -> list[str]:
    """The config file's lines from its first key on, minus its `defaults:` and `hydra:` blocks."""
    body, skipping = [], False
    for line in lines:
        top = bool(line) and not line[0].isspace() and not line.startswith("#") and not line.startswith("-")
        if top:
            skipping = line.split(":")[0].strip() in ("defaults", "hydra")
        if not skipping:
            body.append(f"  {line}" if line else "")
    return body
