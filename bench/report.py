"""The results as an aligned text table (terminal) or Markdown (docs)."""

from __future__ import annotations

from collections.abc import Sequence

from plan import METRICS, Metric
from scenarios import Outcome, Results
from servers import MiB, ServerUsage

GiB = 1 << 30

# Server CPU time per unit of work: (label, seconds-per-work multiplier).
_COST: dict[str, tuple[str, float]] = {
    "mono_push": ("CPU-s/GiB", GiB),
    "chunked_push": ("CPU-s/GiB", GiB),
    "single_pull": ("CPU-s/GiB", GiB),
    "many_pull": ("CPU-s/GiB", GiB),
    "manifest_get": ("CPU-µs/req", 1e6),
    "blob_head": ("CPU-µs/req", 1e6),
    "tags_walk": ("CPU-ms/page", 1e3),
    "tags_create": ("CPU-ms/tag", 1e3),
    "small_images": ("CPU-ms/image", 1e3),
}


def _number(value: float | None, digits: int) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(metric: Metric, first: float | None, second: float | None) -> float | None:
    if first is None or second is None or first == 0:
        return None
    return second / first


def _target(metric: Metric) -> str:
    if metric.absolute_target is not None:
        return f"≤ {metric.absolute_target:g} {metric.unit} (Moorage)"
    if metric.target is None:
        return "-"
    return f"{'≥' if metric.higher_is_better else '≤'} {metric.target:g}"


def _met(metric: Metric, moorage: float | None, ratio: float | None) -> str:
    if metric.absolute_target is not None:
        if moorage is None:
            return "?"
        return "yes" if moorage <= metric.absolute_target else "NO"
    if metric.target is None:
        return "-"
    if ratio is None:
        return "?"
    ok = ratio >= metric.target if metric.higher_is_better else ratio <= metric.target
    return "yes" if ok else "NO"


def verdicts(results: Results, labels: Sequence[str]) -> dict[str, str]:
    """metric key -> "yes" / "NO" / "?" for the metrics that have a target."""
    found: dict[str, str] = {}
    for metric in METRICS:
        if metric.target is None and metric.absolute_target is None:
            continue
        values = [_value(results, metric.key, label) for label in labels]
        found[metric.key] = _met(metric, values[1], _ratio(metric, values[0], values[1]))
    return found


def _value(results: Results, key: str, label: str) -> float | None:
    outcome = results.get(key, {}).get(label)
    return outcome.value if outcome is not None else None


def main_rows(results: Results, labels: Sequence[str]) -> list[list[str]]:
    first, second = labels
    rows = [
        [
            "Metric",
            "Unit",
            first,
            second,
            f"{second}/{first}",
            "Target",
            "Met",
        ]
    ]
    for metric in METRICS:
        if metric.key not in results:
            continue
        a = _value(results, metric.key, first)
        b = _value(results, metric.key, second)
        ratio = _ratio(metric, a, b)
        cells = []
        for label, value in ((first, a), (second, b)):
            outcome = results[metric.key].get(label)
            cells.append("ERROR" if outcome and outcome.error else _number(value, metric.digits))
        rows.append(
            [
                metric.title,
                metric.unit,
                *cells,
                "n/a" if ratio is None else f"{ratio:.2f}",
                _target(metric),
                _met(metric, b, ratio),
            ]
        )
    return rows


def detail_rows(results: Results, labels: Sequence[str]) -> list[list[str]]:
    rows = [["Metric", "Server", "Samples (median is reported)", "Server CPU", "Client CPU s"]]
    for metric in METRICS:
        per_server = results.get(metric.key)
        if not per_server or metric.key not in _COST:
            continue
        unit, scale = _COST[metric.key]
        for label in labels:
            outcome: Outcome | None = per_server.get(label)
            if outcome is None:
                continue
            samples = ", ".join(_number(s.value, metric.digits) for s in outcome.samples)
            if outcome.error:
                samples = f"ERROR: {outcome.error[:120]}"
            cost = outcome.cpu_per_work()
            client = sum(s.client_cpu for s in outcome.samples)
            rows.append(
                [
                    metric.title,
                    label,
                    samples or "-",
                    "n/a" if cost is None else f"{cost * scale:,.2f} {unit}",
                    f"{client:.2f}" if client else "-",
                ]
            )
    return rows


def memory_rows(usages: dict[str, ServerUsage]) -> list[list[str]]:
    rows = [["Server", "Process", "Role", "Peak RSS MiB"]]
    for label, usage in usages.items():
        for process in sorted(usage.processes.values(), key=lambda p: (p.role != "main", p.pid)):
            rows.append([label, str(process.pid), process.role, f"{process.peak_rss / MiB:.1f}"])
    return rows


def phase_rows(usages: dict[str, ServerUsage]) -> list[list[str]]:
    labels = list(usages)
    phases: list[str] = []
    for usage in usages.values():
        for phase in usage.phase_peaks:
            if phase not in phases:
                phases.append(phase)
    rows = [["Phase", *(f"{label} total RSS MiB" for label in labels)]]
    for phase in phases:
        rows.append(
            [phase, *(f"{usages[label].phase_peaks.get(phase, 0) / MiB:.1f}" for label in labels)]
        )
    return rows


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    header = rows[0]
    aligns = ["---" if i < 2 else "---:" for i in range(len(header))]
    return "\n".join([line(header), "| " + " | ".join(aligns) + " |", *map(line, rows[1:])])


def render(
    results: Results,
    labels: Sequence[str],
    environment: dict[str, str],
    usages: dict[str, ServerUsage],
    notes: list[str],
    *,
    markdown: bool,
) -> str:
    table = markdown_table if markdown else text_table
    parts: list[str] = []
    if markdown:
        parts.append("\n".join(f"- **{key}**: {value}" for key, value in environment.items()))
    else:
        width = max(len(key) for key in environment)
        parts.append("\n".join(f"{key:<{width}}  {value}" for key, value in environment.items()))
    parts.append(table(main_rows(results, labels)))
    parts.append(table(detail_rows(results, labels)))
    parts.append(table(memory_rows(usages)))
    parts.append(table(phase_rows(usages)))
    if notes:
        bullet = "- " if markdown else "* "
        parts.append("\n".join(bullet + note for note in notes))
    return "\n\n".join(parts) + "\n"
