#!/usr/bin/env python3
"""Renders config/grafana-dashboard.json from a real Prometheus, without Grafana.

Every panel's queries are sent to Prometheus' HTTP API (query_range) exactly as the
dashboard has them, with the dashboard's variables filled in as Grafana would
($instance = all nodes, $__rate_interval = --rate-interval), and drawn in the
dashboard's own grid layout, units and stacking. Used by loadtest/dashboard.sh for the
README's picture (Grafana itself cannot be installed on the build machines).

  render-dashboard.py --prometheus URL --start UNIX --end UNIX --out PNG
                      [--dashboard config/grafana-dashboard.json] [--step 2] [--rate-interval 10s]
                      [--title TEXT] [--marks FILE]
"""

import argparse
import datetime
import json
import re
import sys
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.gridspec import GridSpec  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

BG, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#fade2a", "#37872d", "#c4162a"]


def query_range(base, expr, start, end, step):
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{q}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise SystemExit(f"query failed: {expr}: {body}")
    return body["data"]["result"]


def legend(fmt, metric):
    if not fmt:
        return json.dumps(metric)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt)


def formatter(unit):
    def human(v, scale, names):
        for name in names:
            if abs(v) < scale:
                return f"{v:.3g} {name}"
            v /= scale
        return f"{v:.3g} {names[-1]}"

    return {
        "Bps": lambda v, _: human(v, 1024, ["B/s", "KiB/s", "MiB/s", "GiB/s"]),
        "bytes": lambda v, _: human(v, 1024, ["B", "KiB", "MiB", "GiB", "TiB"]),
        "percentunit": lambda v, _: f"{v * 100:.0f} %",
        "s": lambda v, _: f"{v * 1000:.3g} ms" if v < 1 else f"{v:.3g} s",
        "reqps": lambda v, _: f"{v:.3g}/s",
    }.get(unit, lambda v, _: f"{v:.3g}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--dashboard", default="config/grafana-dashboard.json")
    ap.add_argument("--start", type=float, required=True)
    ap.add_argument("--end", type=float, required=True)
    ap.add_argument("--step", type=float, default=2)
    ap.add_argument("--rate-interval", default="10s")
    ap.add_argument("--title", default="")
    ap.add_argument("--marks", help="file of 'UNIX-SECONDS label' lines, drawn as vertical lines on every panel")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    dash = json.load(open(a.dashboard))
    marks = []
    if a.marks:
        for line in open(a.marks):
            t, _, label = line.strip().partition(" ")
            if t:
                marks.append((float(t) - a.start, label))
    panels = dash["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(24, rows * 0.62), facecolor=BG)
    gs = GridSpec(rows, 24, figure=fig, hspace=2.2, wspace=1.6, left=0.03, right=0.99, top=0.955, bottom=0.03)
    t0 = a.start
    empty = []
    for p in panels:
        g = p["gridPos"]
        ax = fig.add_subplot(gs[g["y"]:g["y"] + g["h"] - 1, g["x"]:g["x"] + g["w"]])
        ax.set_facecolor(PANEL)
        for side in ax.spines.values():
            side.set_color(GRID)
        ax.tick_params(colors=TEXT, labelsize=8)
        ax.grid(color=GRID, linewidth=0.6)
        ax.set_title(p["title"], color=TEXT, fontsize=11, loc="left")
        defaults = p.get("fieldConfig", {}).get("defaults", {})
        unit = defaults.get("unit", "short")
        stacked = defaults.get("custom", {}).get("stacking", {}).get("mode") == "stacked" or \
            defaults.get("custom", {}).get("stacking", {}).get("mode") == "normal"
        ax.yaxis.set_major_formatter(FuncFormatter(formatter(unit)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f} s"))
        series = []
        for t in p["targets"]:
            expr = t["expr"].replace("$instance", ".*").replace("$__rate_interval", a.rate_interval)
            for r in query_range(a.prometheus, expr, a.start, a.end, a.step):
                xs = [float(v[0]) - t0 for v in r["values"]]
                ys = [float(v[1]) if v[1] not in ("NaN", "+Inf", "-Inf") else float("nan") for v in r["values"]]
                series.append((legend(t.get("legendFormat", ""), r["metric"]), xs, ys))
        if not series:
            empty.append(p["title"])
            ax.text(0.5, 0.5, "no data", color=TEXT, ha="center", va="center", transform=ax.transAxes)
        elif stacked and len(series) > 1:
            # Stack on a common time axis (missing points count as 0).
            times = sorted({x for _, xs, _ in series for x in xs})
            ys = []
            for _, xs, vs in series:
                m = dict(zip(xs, vs))
                ys.append([0 if m.get(x) != m.get(x) or x not in m else m[x] for x in times])
            ax.stackplot(times, ys, labels=[s[0] for s in series], colors=COLORS[:len(series)], alpha=0.75)
        else:
            for i, (name, xs, ys) in enumerate(series):
                ax.plot(xs, ys, label=name, color=COLORS[i % len(COLORS)], linewidth=1.4)
        for i, (x, label) in enumerate(marks):
            ax.axvline(x, color="#8e8e8e", linestyle="--", linewidth=0.8)
            ax.text(x, 0.98 - 0.07 * (i % 2), f" {label}", color="#8e8e8e", fontsize=7,
                    transform=ax.get_xaxis_transform(), va="top")
        ax.set_xlim(0, a.end - a.start)
        if "max" in defaults:
            ax.set_ylim(defaults.get("min", 0), defaults["max"] * 1.05)
        else:
            ax.set_ylim(bottom=0)
        if series:
            leg = ax.legend(loc="upper left", fontsize=7, facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT,
                            ncol=2 if len(series) > 4 else 1)
            leg.get_frame().set_alpha(0.8)
    when = datetime.datetime.fromtimestamp(a.start, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    fig.suptitle(f"{dash['title']} — {a.title or 'rendered from Prometheus'} — {when}, {a.end - a.start:.0f} s",
                 color=TEXT, fontsize=14, x=0.01, ha="left")
    fig.savefig(a.out, dpi=80, facecolor=BG)
    print(f"{a.out}: {len(panels)} panels, {len(empty)} without data {empty}")


if __name__ == "__main__":
    sys.exit(main())
