"""The cluster benchmark's chart: one bar per figure, Loom's advantage over etcd.

Each bar is "how many times better Loom is": Loom/etcd for rates (higher is better) and
etcd/Loom for latencies and failover time (lower is better), so every bar above 1 means Loom
is ahead. Targets and goals are drawn as markers; a bar is red when Loom is behind etcd or misses
its target. matplotlib is
optional: without it, no chart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Bar:
    label: str
    loom: float | None
    etcd: float | None
    higher_is_better: bool
    target: float | None = None  # as an advantage (x), e.g. 1.0 = "at least etcd's"
    goal: float | None = None  # a stretch goal, also as an advantage (e.g. 3.0)
    met: bool | None = None  # an absolute target's verdict (e.g. failover under 1 s)
    fmt: str = "{:.0f}"  # how the raw values are printed
    # Loom/etcd when it is not loom/etcd above: over repeated runs, the median of each run's
    # ratio (a pair measured close in time), not the ratio of two medians from different runs
    paired_ratio: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.paired_ratio is not None:
            return self.paired_ratio
        if not self.loom or not self.etcd:
            return None
        return self.loom / self.etcd

    @property
    def advantage(self) -> float | None:
        r = self.ratio
        if not r:
            return None
        return r if self.higher_is_better else 1 / r


def plot(bars: list[Bar], path: Path, title: str) -> Path | None:
    """Write a PNG to `path`; returns it, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    shown = [b for b in bars if b.advantage is not None]
    if not shown:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 0.8 * len(shown) + 1.8))
    ys = list(range(len(shown)))[::-1]
    vals = [b.advantage or 0.0 for b in shown]
    colors = ["#2a7f3f" if (b.met if b.met is not None else v >= (b.target or 1.0))
              else "#b03a2e" for b, v in zip(shown, vals, strict=True)]
    ax.barh(ys, vals, color=colors, height=0.5)
    for y, b, v in zip(ys, shown, vals, strict=True):
        ax.text(v, y + 0.36, f"{v:.2f}x", va="center", ha="center", fontsize=8)
        if b.target is not None:
            ax.plot([b.target], [y], marker="|", markersize=24, markeredgewidth=3,
                    color="black")
        if b.goal is not None:
            ax.plot([b.goal], [y], marker="D", markersize=7, color="#d68910")
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{b.label} ({'higher' if b.higher_is_better else 'lower'} is better)"
                        f"\nLoom {b.fmt.format(b.loom)}  etcd {b.fmt.format(b.etcd)}"
                        for b in shown], fontsize=8)
    ax.set_xlabel("Loom advantage over etcd (x; > 1 = Loom better)\n"
                  "| = target; orange diamond = goal")
    ax.set_xlim(0, max([*vals, *(b.goal or 0 for b in shown), 1.0]) * 1.15)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
