"""The one verdict every bench target gets: its figure, its bound as written, met or not.

Each bench names its targets as `{name: (comparison, bound)}`; the results file, the terminal
table and the JSON all show the verdicts made here, so a bound is compared and spelled in one
place (`"<= 1.05"`, as the results files print it).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping

Bounds = dict[str, tuple[str, float]]  # target name: (comparison, bound)
_COMPARE = {"<=": operator.le, ">=": operator.ge}


def verdict(value: float, comparison: str, bound: float) -> dict:
    """One figure against its bound.

    Returns:
        {"value": the figure, "target": e.g. "<= 1.05", "met": whether the figure meets it}.
    """
    return {
        "value": value,
        "target": f"{comparison} {bound}",
        "met": bool(_COMPARE[comparison](value, bound)),
    }


def verdicts(figures: Mapping[str, float], bounds: Bounds) -> dict[str, dict]:
    """The verdict of every bound whose figure was measured, in the order of `bounds`."""
    return {k: verdict(figures[k], *bound) for k, bound in bounds.items() if k in figures}
