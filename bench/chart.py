"""A PNG of one report: throughput and latency percentiles per scenario."""

from __future__ import annotations

from pathlib import Path

from bench.results import PERCENTILES, Report


def write_png(report: Report, path: Path) -> Path:
    """Left: requests/s per scenario, labelled with the ratio to ceiling.
    Right: latency percentiles per scenario (ms, log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = report.scenarios
    names = [s.scenario for s in scenarios]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)

    bars = left.bar(names, [s.rps for s in scenarios], color="#4c72b0")
    for bar, s in zip(bars, scenarios, strict=True):
        label = f"{s.rps:,.0f}"
        if s.ratio_to_ceiling is not None:
            label += f"\n{s.ratio_to_ceiling:.0%} of ceiling"
        left.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    left.set_ylabel("requests/s")
    left.set_title("Throughput")
    left.tick_params(axis="x", rotation=20)
    left.margins(y=0.2)

    width = 0.8 / len(PERCENTILES)
    for k, p in enumerate(PERCENTILES):
        xs = [i + (k - (len(PERCENTILES) - 1) / 2) * width for i in range(len(names))]
        values = [s.latency_ms.get(p, 0.0) for s in scenarios]
        right.bar(xs, values, width=width, label=f"p{p}")
    right.set_xticks(range(len(names)), names, rotation=20)
    right.set_yscale("log")
    right.set_ylabel("latency (ms, log scale)")
    right.set_title("Latency percentiles")
    right.legend(fontsize=8)
    right.grid(axis="y", which="both", alpha=0.3)

    connections = report.settings.get("connections")
    fig.suptitle(f"segments bench {report.started_at}  ({connections} connections)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
