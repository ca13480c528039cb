"""Fuzz budgets: every hypothesis property runs bounded in `make test` and long under `make test-slow`.

    @pytest.mark.parametrize("budget", BUDGETS)
    def test_something(budget: int) -> None:
        @given(st.text())
        def prop(text: str) -> None: ...
        run(prop, budget)
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings

BUDGETS = [
    pytest.param(120, id="bounded"),
    pytest.param(3000, id="long", marks=pytest.mark.slow),
]


def run(prop: Callable[[], None], budget: int) -> None:
    """Run a @given property for `budget` examples, no deadline (CI machines differ), no example database
    (a clean clone must behave like any other)."""
    settings(
        max_examples=budget,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )(prop)()
