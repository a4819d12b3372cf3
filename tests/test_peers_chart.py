"""docs/peers.svg is the chart of benchmarks/results/peers.json (benchmarks/peers/chart.py): the
picture in docs/performance.md cannot drift from the figures beside it."""

from __future__ import annotations

import importlib.util
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def chart_module():
    spec = importlib.util.spec_from_file_location("peers_chart", ROOT / "benchmarks" / "peers" / "chart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_chart_is_drawn_from_the_committed_results():
    summary = json.loads((ROOT / "benchmarks" / "results" / "peers.json").read_text())["summary"]
    drawn = chart_module().render(summary)
    assert (ROOT / "docs" / "peers.svg").read_text() == drawn, "run: python benchmarks/peers/chart.py"
    bars = [e for e in ElementTree.fromstring(drawn.encode()).iter("{http://www.w3.org/2000/svg}rect")
            if e.get("width") == "34"]
    framings = len(summary)
    assert len(bars) == framings * 3 * (1 + 3)  # per framing, per system: one throughput bar, three CPU parts
