"""The one verdict every bench target gets: its figure, its bound as written, met, missed, or
undecided.

Each bench names its targets as `{name: (comparison, bound)}`; the results file, the terminal
table and the JSON all show the verdicts made here, so a bound is compared and spelled in one
place (`"<= 1.05"`, as the results files print it). A figure measured with a spread (the
half-width of its interval, `timer.median_spread`) whose interval holds the bound is undecided:
that run cannot say on which side of the bound the figure lies.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping

Bounds = dict[str, tuple[str, float]]  # target name: (comparison, bound)
_COMPARE = {"<=": operator.le, ">=": operator.ge}


def verdict(value: float, comparison: str, bound: float, spread: float | None = None) -> dict:
    """One figure against its bound.

    Args:
        spread: the half-width of the figure's interval; None for an exact figure (a size).

    Returns:
        {"value": the figure, "target": e.g. "<= 1.05", "met": True, False, or None when the
        bound lies within value +- spread (undecided)}, plus "spread" when one was given.
    """
    met = bool(_COMPARE[comparison](value, bound))
    out = {"value": value, "target": f"{comparison} {bound}", "met": met}
    if spread is not None:
        out["met"] = None if abs(value - bound) <= spread else met
        out["spread"] = spread
    return out


def verdicts(
    figures: Mapping[str, float], bounds: Bounds, spreads: Mapping[str, float] | None = None
) -> dict[str, dict]:
    """The verdict of every bound whose figure was measured, in the order of `bounds`; a figure
    named in `spreads` is judged with its spread."""
    spreads = spreads or {}
    return {
        k: verdict(figures[k], *bound, spreads.get(k))
        for k, bound in bounds.items()
        if k in figures
    }


def shown(v: dict) -> str:
    """A verdict as the tables print it: yes, no or undecided."""
    return {True: "yes", False: "no", None: "undecided"}[v["met"]]
