"""The `churnwatch` command: one subcommand per job, each taking the Hydra overrides of its config, e.g.
`churnwatch train model=gru`, `churnwatch score model_path=M events_path=E output_path=O`.

Each subcommand is a module of this package with a `main()`; `scripts/<name>.py` in a checkout are thin
wrappers of the same functions. Only the chosen subcommand's module is imported, and it imports its work
(torch, Lightning, ...) when it runs, so `--help` and a missing key answer at once.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "train": "train a model (network or baseline): metrics.json, model.pt, report.html",
    "score": "score customers with a model.pt: probability, tier, rank, drivers, action",
    "serve": "serve a model.pt over HTTP: real-time scores, micro-batched, hot reload",
    "monitor": "compare today's data with the model's reference: ok / warn / retrain",
    "robustness": "re-score a past date under perturbed inputs: how the warnings hold up",
    "report": "write a training run's HTML report",
    "export": "export a checkpoint as a TorchScript model.pt",
    "ensemble": "ensemble finished runs (weights fitted on validation)",
    "leaderboard": "train and rank models x seeds on one dataset",
    "curves": "learning and validation curves",
    "prepare": "dry-run the data path: validate, snapshot, encode, report",
    "make-synthetic": "write the built-in synthetic data set",
    "merge-scores": "rank the union of shard parts as one run",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: churnwatch <command> [key=value ...]   (Hydra overrides of the command's config)",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()),
        "",
        "churnwatch <command> --help: the command's keys and what they mean; churnwatch --version",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run `churnwatch <command> [overrides]` (the console script)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0 if args else 2)
    if args[0] in ("-V", "--version"):
        from churnwatch import __version__

        print(f"churnwatch {__version__}")
        return
    name = args[0]
    if name not in COMMANDS:
        print(
            f"churnwatch: unknown command {name!r}; one of {', '.join(COMMANDS)} (churnwatch --help)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    module = importlib.import_module(f"churnwatch.cli.{name.replace('-', '_')}")
    # Hydra reads the overrides from sys.argv; argv[0] is the command's own file, which Lightning's DDP
    # launcher runs again for each worker process
    sys.argv = [module.__file__, *args[1:]]
    module.main()
