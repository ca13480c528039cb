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
