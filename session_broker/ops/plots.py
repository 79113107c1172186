"""The console's plots, drawn on the server as inline SVG: no JavaScript, no build step, and
the page's strict Content-Security-Policy still holds. Pure functions of plain data, so the
unit tests check them without a browser."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

W, H = 640, 200  # the drawing area of a chart, in SVG user units
PAD_L, PAD_B, PAD_T = 48, 44, 10
STATUS_COLOURS = {
    "DONE": "#2e7d32",
    "ERROR": "#c62828",
    "CANCELLED": "#757575",
    "RUNNING": "#1565c0",
    "QUEUED": "#f9a825",
}


def _svg(width: int, height: int, body: list[str], label: str, klass: str) -> Markup:
    return Markup(
        f'<svg class="plot {klass}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(label)}</title>" + "".join(body) + "</svg>"
    )


def _num(value: float) -> str:
    """A short tick label: 0.001, 12, 3.4k, 1.2M."""
    if value == 0:
        return "0"
    mag = abs(value)
    if mag >= 1e6:
        return f"{value / 1e6:.3g}M"
    if mag >= 1e3:
        return f"{value / 1e3:.3g}k"
    return f"{value:.3g}"


def top_outcomes(counts: dict[str, int], keep: int) -> list[tuple[str, int]]:
    """Every outcome when there are at most ``keep``; else the ``keep - 1`` most frequent
    and one "other" bar holding the rest (so the bars always add up to the shots)."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) <= keep:
        return sorted(ranked)  # all of them: in outcome order, as a histogram reads
    head = ranked[: keep - 1]
    return head + [(f"other ({len(ranked) - len(head)})", sum(n for _, n in ranked[keep - 1 :]))]


def bar_chart(bars: Sequence[tuple[str, float]], label: str, y_title: str = "count") -> Markup:
    """Vertical bars with their labels under them (rotated when many)."""
    n = max(len(bars), 1)
    top = max([v for _, v in bars] + [0]) or 1
    slot = (W - PAD_L) / n
    body = [_axes(top, y_title)]
    rotate = n > 12
    for i, (name, value) in enumerate(bars):
        h = (H - PAD_B - PAD_T) * value / top
        x = PAD_L + i * slot + slot * 0.1
        y = H - PAD_B - h
        body.append(
            f'<rect class="pbar" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" height="{h:.1f}">'
            f"<title>{escape(str(name))}: {escape(_num(value))}</title></rect>"
        )
        cx = x + slot * 0.4
        if rotate:
            body.append(
                f'<text class="tick" x="{cx:.1f}" y="{H - PAD_B + 8}" '
                f'transform="rotate(60 {cx:.1f} {H - PAD_B + 8})">{escape(str(name))}</text>'
            )
        else:
            body.append(
                f'<text class="tick" x="{cx:.1f}" y="{H - PAD_B + 16}" text-anchor="middle">'
                f"{escape(str(name))}</text>"
            )
    return _svg(W, H + (40 if rotate else 0), body, label, "bars")


def _axes(top: float, y_title: str) -> str:
    ticks = "".join(
        f'<line class="grid" x1="{PAD_L}" x2="{W}" y1="{y:.1f}" y2="{y:.1f}"/>'
        f'<text class="tick" x="{PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end">{_num(v)}</text>'
        for v, y in ((top * f, H - PAD_B - (H - PAD_B - PAD_T) * f) for f in (0, 0.5, 1))
    )
    return (
        ticks + f'<line class="axis" x1="{PAD_L}" x2="{PAD_L}" y1="{PAD_T}" y2="{H - PAD_B}"/>'
        f'<text class="axis-title" x="12" y="{(H - PAD_B) / 2:.0f}" '
        f'transform="rotate(-90 12 {(H - PAD_B) / 2:.0f})" text-anchor="middle">{escape(y_title)}</text>'
    )


def histogram(bounds: Sequence[float], counts: Sequence[int], label: str) -> Markup:
    """A latency histogram from per-bucket (non-cumulative) counts; bucket i holds values
    ``<= bounds[i]``, the last one (len(bounds)) the rest. Empty leading and trailing
    buckets are dropped so the shape is visible."""
    names = [f"≤{_seconds(b)}" for b in bounds] + [f">{_seconds(bounds[-1])}"]
    pairs = list(zip(names, counts))
    used = [i for i, (_, c) in enumerate(pairs) if c]
    if not used:
        return Markup('<p class="empty">No samples yet.</p>')
    return bar_chart(pairs[used[0] : used[-1] + 1], label, "jobs")


def _seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:g}ms"
    if s < 60:
        return f"{s:g}s"
    return f"{s / 60:g}min"


def series(values: Sequence[float], errors: Sequence[float] | None, label: str, x_title: str) -> Markup:
    """Points (with error bars when ``errors`` is given) against their index: an estimator's
    expectation values across a parameter sweep or a list of observables."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return Markup('<p class="empty">No finite values to plot.</p>')
    errs = list(errors or [])
    lo = min(v - (errs[i] if i < len(errs) else 0) for i, v in enumerate(values) if v in finite)
    hi = max(v + (errs[i] if i < len(errs) else 0) for i, v in enumerate(values) if v in finite)
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    n = len(values)

    def y(v: float) -> float:
        return PAD_T + (H - PAD_B - PAD_T) * (hi - v) / (hi - lo)

    def x(i: int) -> float:
        return PAD_L + 10 + (W - PAD_L - 20) * (i / max(n - 1, 1))

    body = [
        f'<line class="grid" x1="{PAD_L}" x2="{W}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
        f'<text class="tick" x="{PAD_L - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{_num(v)}</text>'
        for v in (lo, (lo + hi) / 2, hi)
    ]
    if lo < 0 < hi:
        body.append(f'<line class="axis" x1="{PAD_L}" x2="{W}" y1="{y(0):.1f}" y2="{y(0):.1f}"/>')
    points = [(i, v) for i, v in enumerate(values) if v in finite]
    body.append(
        '<polyline class="line" points="' + " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in points) + '"/>'
    )
    for i, v in points:
        if i < len(errs) and errs[i]:
            body.append(
                f'<line class="err" x1="{x(i):.1f}" x2="{x(i):.1f}" '
                f'y1="{y(v - errs[i]):.1f}" y2="{y(v + errs[i]):.1f}"/>'
            )
        tip = f"{i}: {v:.6g}" + (f" ± {errs[i]:.3g}" if i < len(errs) else "")
        body.append(f'<circle class="pt" cx="{x(i):.1f}" cy="{y(v):.1f}" r="3"><title>{tip}</title></circle>')
    body.append(
        f'<text class="axis-title" x="{(W + PAD_L) / 2:.0f}" y="{H - 6}" text-anchor="middle">'
        f"{escape(x_title)} (0..{n - 1})</text>"
    )
    return _svg(W, H, body, label, "series")


@dataclass(frozen=True)
class Span:
    """One job on a session's timeline (seconds, Redis server clock)."""

    job_id: str
    status: str
    created: float
    running: float | None
    finished: float | None


def timeline(spans: Sequence[Span], now: float, label: str) -> Markup:
    """One row per job, oldest at the top: a pale bar while it queued, a solid one while it
    ran, coloured by status; the axis is seconds since the first job was created."""
    if not spans:
        return Markup('<p class="empty">No jobs yet.</p>')
    start = min(s.created for s in spans)
    open_ = any(s.finished is None for s in spans)  # the axis runs to now only while one is
    end = max(([now] if open_ else []) + [s.finished or s.running or s.created for s in spans])
    total = max(end - start, 1e-3)
    row = 14
    height = PAD_T + row * len(spans) + 30
    left = 150

    def x(t: float) -> float:
        return left + (W - left - 10) * (t - start) / total

    body = []
    for k, s in enumerate(spans):
        y = PAD_T + k * row
        colour = STATUS_COLOURS.get(s.status, "#555")
        ran_from = s.running if s.running is not None else (s.finished or now)
        body.append(
            f'<text class="tick" x="{left - 6}" y="{y + 10}" text-anchor="end">{escape(s.job_id[:18])}</text>'
            f'<rect class="queued" x="{x(s.created):.1f}" y="{y + 2}" '
            f'width="{max(x(ran_from) - x(s.created), 0.5):.1f}" height="{row - 4}">'
            f"<title>{escape(s.job_id)} queued {ran_from - s.created:.3f} s</title></rect>"
        )
        if s.running is not None:
            stop = s.finished if s.finished is not None else now
            body.append(
                f'<rect class="ran" fill="{colour}" x="{x(s.running):.1f}" y="{y + 2}" '
                f'width="{max(x(stop) - x(s.running), 1.0):.1f}" height="{row - 4}">'
                f"<title>{escape(s.job_id)} {escape(s.status)}, ran {stop - s.running:.3f} s</title></rect>"
            )
    axis_y = PAD_T + row * len(spans) + 4
    body.append(f'<line class="axis" x1="{left}" x2="{W - 10}" y1="{axis_y}" y2="{axis_y}"/>')
    for f in (0, 0.25, 0.5, 0.75, 1):
        t = total * f
        body.append(
            f'<text class="tick" x="{x(start + t):.1f}" y="{axis_y + 14}" text-anchor="middle">'
            f"{_num(t)} s</text>"
        )
    return _svg(W, height, body, label, "timeline")


PALETTE = ("#1565c0", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#c62828", "#5d4037", "#546e7a")


def usage_lines(points: dict[str, Sequence[tuple[float, float]]], now: float, label: str) -> Markup:
    """Each instance's usage over time: one step line per instance of (time, seconds used
    so far, counted from the window's start), the x axis in seconds before ``now``."""
    drawn = {name: sorted(p) for name, p in points.items() if p}
    if not drawn:
        return Markup('<p class="empty">No finished job of an instance yet.</p>')
    start = min(p[0][0] for p in drawn.values())
    span = max(now - start, 1e-3)
    top = max(p[-1][1] for p in drawn.values()) or 1.0

    def x(t: float) -> float:
        return PAD_L + (W - PAD_L - 10) * (t - start) / span

    def y(v: float) -> float:
        return H - PAD_B - (H - PAD_B - PAD_T) * v / top

    body = [_axes(top, "seconds used")]
    for i, (name, pts) in enumerate(sorted(drawn.items())):
        colour = PALETTE[i % len(PALETTE)]
        path, last = [f"{x(start):.1f},{y(0):.1f}"], 0.0
        for t, v in pts:
            path += [f"{x(t):.1f},{y(last):.1f}", f"{x(t):.1f},{y(v):.1f}"]
            last = v
        path.append(f"{x(now):.1f},{y(last):.1f}")
        body.append(
            f'<polyline class="line" style="stroke:{colour}" points="{" ".join(path)}">'
            f"<title>{escape(name)}: {escape(_num(last))} s</title></polyline>"
        )
        body.append(
            f'<text class="tick" x="{PAD_L + 8 + 110 * i}" y="{H - 6}" style="fill:{colour}">{escape(name)}</text>'
        )
    body.append(
        f'<text class="tick" x="{PAD_L}" y="{H - PAD_B + 16}">-{escape(_seconds(span))}</text>'
        f'<text class="tick" x="{W - 10}" y="{H - PAD_B + 16}" text-anchor="end">now</text>'
    )
    return _svg(W, H, body, label, "usage")
