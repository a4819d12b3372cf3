#!/usr/bin/env python
"""Draw the peer benchmark's summary as an SVG bar chart (no plotting dependency).

    python benchmarks/peers/chart.py [benchmarks/results/peers.json] [docs/peers.svg]

Two panels, one group of bars per hub framing: events/s (median), and CPU µs per persisted event
stacked as client / hub / redis-server. The same JSON gives the same bytes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[2]
SYSTEMS = ("weir", "shuttle", "naive")
LABELS = {"weir": "weir", "shuttle": "Shuttle", "naive": "naive Python"}
COLORS = {"weir": "#2b6cb0", "shuttle": "#c05621", "naive": "#718096"}
PARTS = (("client", 1.0), ("hub", 0.55), ("redis", 0.3))  # stacked CPU: opacity per process
FRAMING_TITLES = {"one": "one message per DATA frame", "packed": "packed DATA frames"}
PANEL_W, PANEL_H, TOP, LEFT, BAR, GAP = 420, 260, 60, 60, 34, 70
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"


def _text(x: float, y: float, text: str, size: int = 12, anchor: str = "middle", weight: str = "normal") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-family="{FONT}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}">{escape(text)}</text>')


def _panel(x0: float, title: str, groups: list[tuple[str, dict]], value, unit: str, stacked: bool) -> list[str]:
    values = [sum(value(s, p) for p, _ in PARTS) if stacked else value(s, None) for _, g in groups for s in g.values()]
    top = max(values) * 1.15 or 1.0
    out = [_text(x0 + PANEL_W / 2, TOP - 30, title, 14, weight="bold")]
    base = TOP + PANEL_H
    out.append(f'<line x1="{x0 + LEFT}" y1="{base}" x2="{x0 + PANEL_W}" y2="{base}" stroke="#333"/>')
    for tick in range(5):
        y = base - PANEL_H * tick / 4
        out.append(f'<line x1="{x0 + LEFT - 4}" y1="{y:.1f}" x2="{x0 + PANEL_W}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(_text(x0 + LEFT - 8, y + 4, f"{top * tick / 4:,.0f}", 10, "end"))
    out.append(_text(x0 + 14, TOP + PANEL_H / 2, unit, 11, weight="bold").replace(
        "<text ", f'<text transform="rotate(-90 {x0 + 14} {TOP + PANEL_H / 2})" ', 1))
    x = x0 + LEFT + 20
    for framing, systems in groups:
        start = x
        for system in SYSTEMS:
            if system not in systems:
                continue
            y = base
            for part, opacity in (PARTS if stacked else ((None, 1.0),)):
                height = PANEL_H * value(systems[system], part) / top
                y -= height
                out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{BAR}" height="{height:.1f}" '
                           f'fill="{COLORS[system]}" fill-opacity="{opacity}"/>')
            total = base - y
            label = sum(value(systems[system], p) for p, _ in PARTS) if stacked else value(systems[system], None)
            out.append(_text(x + BAR / 2, base - total - 5, f"{label:,.0f}" if label >= 100 else f"{label:.1f}", 10))
            x += BAR + 6
        out.append(_text((start + x - 6) / 2, base + 16, FRAMING_TITLES.get(framing, framing), 11))
        x += GAP
    return out


def render(summary: dict) -> str:
    groups = [(framing, summary[framing]["systems"]) for framing in ("one", "packed") if framing in summary]
    width, height = 2 * PANEL_W + 40, TOP + PANEL_H + 90
    body = ['<?xml version="1.0" encoding="UTF-8"?>',
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
            f'<rect width="{width}" height="{height}" fill="#ffffff"/>']
    body += _panel(0, "persisted events/s (median)", groups, lambda s, _: s["events_per_s"], "events/s", False)
    body += _panel(PANEL_W + 40, "CPU µs per event: client + hub + redis", groups,
                   lambda s, part: s["cpu_us_per_event"][part], "µs per event", True)
    legend_y = TOP + PANEL_H + 50
    x = LEFT
    for system in SYSTEMS:
        body.append(f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{COLORS[system]}"/>')
        body.append(_text(x + 18, legend_y, LABELS[system], 12, "start"))
        x += 130
    body.append(_text(x + 10, legend_y, "stacked CPU, darkest first: client, hub, redis-server", 11, "start"))
    body.append("</svg>")
    return "\n".join(body) + "\n"


def main(argv: list[str]) -> int:
    source = Path(argv[0]) if argv else ROOT / "benchmarks" / "results" / "peers.json"
    target = Path(argv[1]) if len(argv) > 1 else ROOT / "docs" / "peers.svg"
    target.write_text(render(json.loads(source.read_text())["summary"]))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
