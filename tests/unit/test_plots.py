"""The console's SVG plots (session_broker.ops.plots): pure functions, checked without a browser."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from session_broker.core import keys as K
from session_broker.ops import plots
from session_broker.ops.metrics import bucket_counts

SVG = "{http://www.w3.org/2000/svg}"


def parse(markup) -> ET.Element:
    return ET.fromstring(str(markup))  # well-formed XML, or this raises


def test_top_outcomes_keeps_every_outcome_or_folds_the_rest_into_other():
    few = {"11": 480, "00": 520}
    assert plots.top_outcomes(few, 8) == [("00", 520), ("11", 480)]  # all, in outcome order
    many = {format(i, "05b"): 100 - i for i in range(32)}
    bars = plots.top_outcomes(many, 8)
    assert len(bars) == 8 and bars[:7] == [(format(i, "05b"), 100 - i) for i in range(7)]
    assert bars[-1] == ("other (25)", sum(100 - i for i in range(7, 32)))
    assert sum(n for _, n in bars) == sum(many.values())  # the bars add up to the shots


def test_bar_chart_draws_one_bar_per_item_with_heights_in_proportion():
    svg = parse(plots.bar_chart([("00", 500), ("11", 250)], "counts"))
    bars = svg.findall(f".//{SVG}rect[@class='pbar']")
    assert len(bars) == 2
    h = [float(b.get("height")) for b in bars]
    assert abs(h[0] - 2 * h[1]) < 0.2
    assert svg.find(f"{SVG}title").text == "counts"


def test_text_in_plots_is_escaped():
    svg = str(plots.bar_chart([("<script>x</script>", 1)], 'a "label" & <b>'))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    parse(svg)


def test_histogram_from_the_redis_hash_drops_empty_edges():
    fields = {"0.005": "3", "0.01": "5", "0.05": "1", "+Inf": "2", "sum": "1.2", "count": "11"}
    counts = bucket_counts(fields)
    assert len(counts) == len(K.HISTOGRAM_BOUNDS) + 1 and sum(counts) == 11 and counts[-1] == 2
    svg = parse(plots.histogram(K.HISTOGRAM_BOUNDS, counts, "queue wait"))
    labels = [t.text for t in svg.findall(f".//{SVG}text[@class='tick']") if t.text and t.text[0] in "≤>"]
    assert labels[0] == "≤5ms" and labels[-1] == ">30min"  # from the first used bucket to the last
    assert "No samples" in str(plots.histogram(K.HISTOGRAM_BOUNDS, [0] * len(counts), "x"))


def test_series_plots_points_and_error_bars():
    svg = parse(plots.series([0.5, -0.25, 1.0], [0.1, 0.1, 0.0], "evs", "index"))
    assert len(svg.findall(f".//{SVG}circle")) == 3
    assert len(svg.findall(f".//{SVG}line[@class='err']")) == 2  # a zero error draws no bar
    assert "No finite values" in str(plots.series([float("nan")], None, "evs", "index"))


def test_timeline_has_a_queued_and_a_running_bar_per_job():
    spans = [
        plots.Span("a", "DONE", 100.0, 100.5, 101.0),
        plots.Span("b", "RUNNING", 100.2, 101.0, None),
        plots.Span("c", "QUEUED", 100.4, None, None),
    ]
    svg = parse(plots.timeline(spans, now=102.0, label="session s"))
    assert len(svg.findall(f".//{SVG}rect[@class='queued']")) == 3
    ran = svg.findall(f".//{SVG}rect[@class='ran']")
    assert [r.get("fill") for r in ran] == [plots.STATUS_COLOURS["DONE"], plots.STATUS_COLOURS["RUNNING"]]
    # a is drawn before b starts running: x grows with time
    assert float(ran[0].get("x")) < float(ran[1].get("x"))
    assert "No jobs" in str(plots.timeline([], 0.0, "x"))


def test_every_console_template_compiles():
    import jinja2

    from session_broker.ops import web

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(web.HERE)), autoescape=True)
    names = sorted(p.name for p in web.HERE.glob("*.html"))
    assert {"base.html", "index.html", "session.html", "job.html", "jobs_table.html"} <= set(names)
    for name in names:
        env.get_template(name)  # a syntax error raises here


def test_usage_lines_draw_one_step_line_per_instance():
    svg = parse(
        plots.usage_lines({"a": [(10.0, 1.0), (20.0, 3.0)], "b": [(15.0, 2.0)], "c": []}, 30.0, "usage")
    )
    lines = [e for e in svg.iter() if e.tag.endswith("polyline")]
    assert len(lines) == 2
    assert "a: 3 s" in "".join(e.text or "" for e in svg.iter())
    assert "No finished job" in str(plots.usage_lines({}, 0.0, "usage"))
