"""The exactly-once guard of scoring: every input id once in the output, or a loud failure."""

import pandas as pd
import pyarrow as pa
import pytest

from churnwatch.scoring.ranking import check_each_once


def _frame(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": pd.Series(ids, dtype=str)})


def test_each_input_id_once_passes() -> None:
    check_each_once(_frame(["b", "a", "c"]), pa.array(["a", "b", "c"]))
    check_each_once(_frame([]), pa.array([], pa.string()))


@pytest.mark.parametrize(
    "output",
    [["a", "b"], ["a", "b", "b"], ["a", "b", "c", "c"], ["a", "b", "x"], ["a", "b", "c", "x"]],
    ids=["lost", "lost-and-duplicated", "duplicated", "stranger-instead", "stranger-extra"],
)
def test_lost_duplicated_or_stranger_ids_fail_loudly(output: list[str]) -> None:
    with pytest.raises(RuntimeError, match="lost or duplicated customers"):
        check_each_once(_frame(output), pa.array(["a", "b", "c"]))
