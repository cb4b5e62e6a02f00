"""A study's marginal-utility figure, after the paper's: dev score against the % of HSK kept (log
x, relative to the full-HSK arm), one panel per axis (depth, length, width), one curve per
strategy, and full HSK, prediction-only and CE-only as horizontal lines.
"""

from __future__ import annotations

from pathlib import Path

from hsktrain.study.arms import AXES, ArmResults, baseline, curves_on, full_arm


def plot(arms: list[ArmResults], metric: str, title: str, png: Path) -> None:
    """Three panels (depth, length, width): score vs % of HSK kept, one curve per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    full = full_arm(arms)
    ref = full.fraction if full and full.fraction else 1.0
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    lines = [
        (full, "full HSK", "-"),
        (baseline(arms, "pred"), "prediction only", "--"),
        (baseline(arms, "ce"), "CE only", ":"),
    ]
    for ax, axis in zip(axes, AXES, strict=True):
        curves = curves_on(arms, axis)
        for name, on in curves.items():
            on = sorted(on, key=lambda a: a.fraction)
            x = [100 * a.fraction / ref for a in on]
            ax.errorbar(
                x,
                [a.mean(metric) for a in on],
                [a.std(metric) or 0 for a in on],
                marker="o",
                capsize=3,
                label=f"l_top {name}" if axis == "depth" else name,
            )
        for arm, label, style in lines:
            if arm is not None:
                ax.axhline(arm.mean(metric), color="gray", linestyle=style, label=label)
        if not curves:
            ax.text(0.5, 0.5, "no runs on this axis", ha="center", transform=ax.transAxes)
        else:
            ax.set_xscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}")
            ax.xaxis.set_major_formatter(plain)
            lo, hi = ax.get_xlim()
            # under a decade wide the log axis labels only minor ticks: as plain numbers too
            ax.xaxis.set_minor_formatter(plain if hi / lo < 10 else NullFormatter())
        ax.set_title(axis)
        ax.set_xlabel("% of HSK kept" + (" (of the full-HSK arm's)" if full else ""))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[0].set_ylabel(f"dev {metric}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
