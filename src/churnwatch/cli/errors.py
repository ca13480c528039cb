"""The commands' user errors as one line on stderr and exit status 2, never a traceback.

Hydra prints a traceback for anything a task function raises, so each command wraps its task function in
`one_line_errors` (inside `@hydra.main`, see `churnwatch.cli.app.command`). Only what a user can fix is
shortened, and churnwatch says so by the error's type (`churnwatch.errors`): bad data
(DataValidationError), a config value it refuses (ConfigError), an unusable model file (ArtifactError), an
input monitoring cannot use (MonitorError); and an output that exists or an input that does not, a
non-finite training loss or scored probability (FloatingPointError, naming the customers). Any other
exception, a ValueError too (from a library, or a check of churnwatch's own invariants), is a bug and keeps
its traceback (so does every error with HYDRA_FULL_ERROR=1, Hydra's switch for full tracebacks).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import OmegaConfBaseException

from churnwatch.errors import ArtifactError, ConfigError, DataValidationError, MonitorError

EXIT_USER_ERROR = 2
USER_ERRORS = (
    DataValidationError,
    ConfigError,
    ArtifactError,
    MonitorError,
    FileExistsError,
    FileNotFoundError,
    FloatingPointError,  # a non-finite training loss or churn probability: the message names the customers
)

F = TypeVar("F", bound=Callable[..., Any])


def is_user_error(exc: BaseException) -> bool:
    """An error the user can fix from its message alone (see the module docstring)."""
    return isinstance(exc, USER_ERRORS)


def one_line(exc: BaseException) -> str:
    """The message on one line (newlines shown as \\n), or the error's type when it has none."""
    text = str(exc).strip() or type(exc).__name__
    return text.replace("\r", "\\r").replace("\n", "\\n")


def composition_error(exc: BaseException) -> str | None:
    """One line for Hydra's refusal of a command line's override that the typed configs decide (an unknown
    key, a value of the wrong type, a config group option that does not exist); None for anything else
    (a sweep value without --multirun, ...), which Hydra reports itself."""
    first = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
    if isinstance(exc, MissingConfigException):
        text = str(exc)
        options = [ln.strip() for ln in text.split("Available options", 1)[-1].splitlines()[1:]]
        options = [o for o in options if o and not o.startswith("Config search path")]
        listed = options[: options.index("") if "" in options else None]
        shown = [o for o in listed if not o.endswith("_schema") and "=" not in o]
        return f"{first}; options: {', '.join(shown)}" if shown and "Available options" in text else first
    cause = exc.__cause__
    if isinstance(exc, ConfigCompositionException) and isinstance(cause, OmegaConfBaseException):
        return f"{first}: {str(cause).strip().splitlines()[0]}"
    return None


def user_error_exit(name: str, message: str) -> None:
    """Print `<name>: <message>` on stderr and exit with status 2."""
    print(f"{name}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USER_ERROR)


def one_line_errors(name: str) -> Callable[[F], F]:
    """A decorator: the function, with user errors reported as `<name>: <message>` on stderr and exit
    status 2 (e.g. name "churnwatch score")."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                if not is_user_error(exc) or os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                user_error_exit(name, one_line(exc))

        return wrapper  # type: ignore[return-value]

    return decorate
