"""PNG plots a person can look at: leak rate by family and configuration, utility vs leakage,
and per-target bars. matplotlib's Agg backend: no display needed (CI, servers)."""

from __future__ import annotations

from pathlib import Path

from unlearn_eval.families import FAMILIES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grouped_bars(ax, labels: list[str], series: dict[str, list[float]]) -> None:
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=name)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))], labels, rotation=45, ha="right")
    ax.set_ylim(0, 1.25)
    ax.legend(fontsize="small", loc="upper center", ncol=min(4, max(1, len(series))))


def write_plots(summaries: dict[str, dict], out: Path) -> list[str]:
    """The three PNGs; returns their paths."""
    plt = _pyplot()
    written = []
    families = [f for f in FAMILIES if any(s["rows"][f]["n"] for s in summaries.values())]

    fig, ax = plt.subplots(figsize=(max(6, len(families) * 0.8), 4.5))
    _grouped_bars(ax, families, {name: [s["rows"][f]["leak_rate"] or 0.0 for f in families]
                                 for name, s in summaries.items()})
    ax.set_ylabel("leak rate (probes the reference leaks)")
    ax.set_title("Leak rate by attack family and configuration")
    written.append(_save(fig, plt, out / "leak_by_family.png"))

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    placed: dict[tuple[float, float], int] = {}  # labels of coinciding points are stacked, not overprinted
    for name, s in summaries.items():
        x, y = s["leak_rate_all"], s["utility"]
        if x is not None and y is not None:
            ax.scatter([x], [y], s=60)
            n = placed[(x, y)] = placed.get((x, y), -1) + 1
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, -14 * n - 4))
    ax.set_xlim(-0.05, 1.25)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("leak rate, all target probes (lower is better)")
    ax.set_ylabel("utility: neighbour + general answered vs reference")
    ax.set_title("Utility vs leakage")
    written.append(_save(fig, plt, out / "utility_vs_leakage.png"))

    targets = sorted({t for s in summaries.values() for t in s["per_target"]})
    fig, ax = plt.subplots(figsize=(max(6, len(targets) * 1.2), 4.5))
    _grouped_bars(ax, targets, {name: [(s["per_target"].get(t, {}).get("leak_rate") or 0.0) for t in targets]
                                for name, s in summaries.items()})
    ax.set_ylabel("leak rate")
    ax.set_title("Leak rate per target")
    written.append(_save(fig, plt, out / "per_target.png"))
    return written


def _save(fig, plt, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
