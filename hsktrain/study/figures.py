"""A study's marginal-utility figure, after the paper's: dev score against the % of HSK kept (log
x, relative to the full-HSK arm), one panel per axis (depth, length, width) that has arms, one
curve per strategy; a panel of the study's listed configurations (full HSK, `1l_10t_0.1h`, the
joint ones, ...), one point each; full HSK, prediction-only and CE-only as horizontal lines.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from hsktrain.study.arms import AXES, ArmResults, baseline, curves_on, full_arm, listed


def panels(arms: list[ArmResults]) -> list[tuple[str, dict[str, list[ArmResults]]]]:
    """(title, curves) of each panel with points: the axes with arms on them, then the listed
    configurations (every HSK arm the study lists by name, `configs` or `joint`, whose share of
    HSK is known: one point each, named by its HSK budget unless two share one)."""
    out = [(axis, c) for axis in AXES if (c := curves_on(arms, axis))]
    points = [a for a in arms if listed(a) and a.fraction > 0]
    budgets = Counter(a.hsk for a in points)
    if points:
        names = {(a.hsk if budgets[a.hsk] == 1 else a.config): [a] for a in points}
        out.append(("configurations", names))
    return out


def plot(arms: list[ArmResults], metric: str, title: str, png: Path) -> bool:
    """One panel per `panels` entry: score vs % of HSK kept, one curve per strategy. Writes
    nothing and returns False when no HSK arm has a point (a figure of baselines alone)."""
    shown = panels(arms)
    if not shown:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    full = full_arm(arms)
    ref = full.fraction if full and full.fraction else 1.0
    n = len(shown)
    fig, axes = plt.subplots(1, n, figsize=(max(7, 5 * n), 4.2), sharey=True, squeeze=False)
    lines = [
        (full, "full HSK", "-"),
        (baseline(arms, "pred"), "prediction only", "--"),
        (baseline(arms, "ce"), "CE only", ":"),
    ]
    for ax, (panel, curves) in zip(axes[0], shown, strict=True):
        for name, on in curves.items():
            on = sorted(on, key=lambda a: a.fraction)
            x = [100 * a.fraction / ref for a in on]
            ax.errorbar(
                x,
                [a.mean(metric) for a in on],
                [a.std(metric) or 0 for a in on],
                marker="o",
                capsize=3,
                label=f"l_top {name}" if panel == "depth" else name,
            )
        for arm, label, style in lines:
            if arm is not None:
                ax.axhline(arm.mean(metric), color="gray", linestyle=style, label=label)
        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        lo, hi = ax.get_xlim()
        # under a decade wide the log axis labels only minor ticks: as plain numbers too
        ax.xaxis.set_minor_formatter(plain if hi / lo < 10 else NullFormatter())
        ax.set_title(panel)
        ax.set_xlabel("% of HSK kept" + (" (of the full-HSK arm's)" if full else ""))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"dev {metric}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True
