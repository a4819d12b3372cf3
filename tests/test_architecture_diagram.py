"""docs/architecture.svg and docs/delivery.svg are what tools/architecture_diagram.py and
tools/delivery_diagram.py draw from weir's code, and their arrows run clear of the boxes they do
not join."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from itertools import combinations, pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "architecture_diagram.py"
SVG = ROOT / "docs" / "architecture.svg"

sys.path.insert(0, str(SCRIPT.parent))  # the script's own import of svg_boxes, as when it is run

import architecture_diagram  # noqa: E402
import delivery_diagram  # noqa: E402
import svg_boxes  # noqa: E402

DIAGRAMS = [architecture_diagram, delivery_diagram]


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False)


def test_the_committed_svg_is_what_the_script_generates(tmp_path):
    generated = tmp_path / "architecture.svg"
    assert run_script("--output", str(generated)).returncode == 0
    assert generated.read_bytes() == SVG.read_bytes(), "run: python tools/architecture_diagram.py"
    assert run_script("--check").returncode == 0
    generated.write_text(generated.read_text().replace("chan 1", "chan 4"))
    stale = run_script("--check", "--output", str(generated))
    assert stale.returncode == 1 and "stale" in stale.stderr


def test_the_svg_is_well_formed_and_names_every_actor_and_channel():
    from weir.actors.pipeline import BATCH_TO_PERSIST, FILTER_TO_BATCH, SOURCE_TO_FILTER

    texts = [element.text for element in ElementTree.parse(SVG).iter("{http://www.w3.org/2000/svg}text")]
    for actor in ("source", "filter", "batch", "persist", "observability", "Redis"):
        assert actor in texts
    channels = [text for text in texts if re.fullmatch(r"chan \d+", text)]
    assert channels == [f"chan {n}" for n in (SOURCE_TO_FILTER, FILTER_TO_BATCH, BATCH_TO_PERSIST)]
    assert "](architecture.svg)" in (ROOT / "docs" / "architecture.md").read_text(), "docs/architecture.md shows it"


def laid_out(module=architecture_diagram) -> tuple[svg_boxes.Diagram, svg_boxes.Layout]:
    diagram = module.diagram()
    diagram.svg()
    return diagram, svg_boxes.Layout(diagram.root)


def segments(points):
    return list(pairwise(points))


def crosses_box(segment, box) -> bool:
    """The segment passes through the inside of ``box`` (touching its edge does not count)."""
    (x1, y1), (x2, y2) = segment
    left, right, top, bottom = box.x + 1, box.x + box.width - 1, box.y + 1, box.y + box.height - 1
    return max(x1, x2) > left and min(x1, x2) < right and max(y1, y2) > top and min(y1, y2) < bottom


@pytest.mark.parametrize("module", DIAGRAMS, ids=lambda m: m.__name__)
def test_every_arrow_runs_clear_of_the_boxes_it_does_not_join(module):
    diagram, layout = laid_out(module)
    leaves = [box for box in diagram.root.boxes() if isinstance(box, svg_boxes.Box)]
    for arrow in diagram.arrows:
        points = svg_boxes._path(layout, arrow)
        assert all(a[0] == b[0] or a[1] == b[1] for a, b in segments(points)), f"{arrow.source}: not orthogonal"
        for box in leaves:
            if box.id in (arrow.source, arrow.target):
                continue
            assert not any(crosses_box(segment, box) for segment in segments(points)), \
                f"the arrow {arrow.source} -> {arrow.target} runs through {box.id}"


@pytest.mark.parametrize("module", DIAGRAMS, ids=lambda m: m.__name__)
def test_no_two_arrows_cross(module):
    diagram, layout = laid_out(module)
    paths = {f"{a.source}->{a.target}/{a.end_shift}": segments(svg_boxes._path(layout, a)) for a in diagram.arrows}

    def cross(s, t) -> bool:  # a horizontal and a vertical segment meeting strictly inside both
        (h, v) = (s, t) if s[0][1] == s[1][1] else (t, s)
        if h[0][1] != h[1][1] or v[0][0] != v[1][0]:
            return False
        x, y = v[0][0], h[0][1]
        return min(h[0][0], h[1][0]) < x < max(h[0][0], h[1][0]) and min(v[0][1], v[1][1]) < y < max(v[0][1], v[1][1])

    for (name_a, a), (name_b, b) in combinations(paths.items(), 2):
        assert not any(cross(s, t) for s in a for t in b), f"{name_a} crosses {name_b}"


def test_the_committed_delivery_svg_is_what_its_script_generates_and_docs_show_it(tmp_path):
    script = SCRIPT.parent / "delivery_diagram.py"
    generated = tmp_path / "delivery.svg"
    run = subprocess.run([sys.executable, str(script), "--output", str(generated)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert generated.read_bytes() == (ROOT / "docs" / "delivery.svg").read_bytes(), "run: python tools/delivery_diagram.py"
    texts = [element.text for element in ElementTree.parse(generated).iter("{http://www.w3.org/2000/svg}text")]
    for title in ("Parquet files", "NATS JetStream", "webhook endpoint", "Redis"):
        assert title in texts
    assert "](delivery.svg)" in (ROOT / "docs" / "delivery.md").read_text(), "docs/delivery.md shows it"
