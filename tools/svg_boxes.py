"""A small box-and-arrow diagram writer: nested boxes laid out in rows and columns, orthogonal
arrows between them, written as SVG.

No dependency (graphviz's ``dot`` is not on PyPI) and no randomness: the same description gives the
same bytes, so a test can check a committed SVG against its description. Text is set in a
monospace font, so its width is known without measuring glyphs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

CHAR_WIDTH = 7.2  # 12 px monospace: 0.6 em per character
LINE_HEIGHT = 16
TITLE_HEIGHT = 18
FONT = "DejaVu Sans Mono, Menlo, Consolas, monospace"


@dataclass(frozen=True)
class Style:
    fill: str = "#ffffff"
    stroke: str = "#333333"
    dashed: bool = False
    rounded: int = 4
    title_color: str = "#111111"


# weir's palette: both diagrams (docs/architecture.svg, docs/delivery.svg) draw with these, so a
# process, a supervisor or Redis looks the same in each.
EXTERNAL = Style(fill="#eef2f7", stroke="#5b6b7f")
PROCESS = Style(fill="#fffbea", stroke="#b08900")
SUPERVISOR = Style(fill="#eaf4ff", stroke="#2f6fb0", dashed=True, title_color="#1d4f82")
ACTOR = Style(fill="#ffffff", stroke="#333333")
REDIS = Style(fill="#fdecea", stroke="#b03a2e")
PLAIN = Style(fill="none", stroke="none")


@dataclass
class Box:
    """A leaf: a bold title and lines of text."""

    id: str
    title: str
    lines: Sequence[str] = ()
    style: Style = Style()
    padding: int = 8
    x: float = 0
    y: float = 0
    width: float = 0
    height: float = 0

    def measure(self) -> None:
        widest = max([len(self.title) * CHAR_WIDTH * 1.05] + [len(line) * CHAR_WIDTH for line in self.lines])
        self.width = widest + 2 * self.padding
        self.height = TITLE_HEIGHT + len(self.lines) * LINE_HEIGHT + 2 * self.padding

    def place(self, x: float, y: float) -> None:
        self.x, self.y = x, y

    def boxes(self) -> list[Box | Group]:
        return [self]


@dataclass
class Group:
    """A titled container whose children are laid out in a ``row`` or a ``column``."""

    id: str
    title: str
    children: Sequence[Box | Group]
    direction: str = "column"  # or "row"
    style: Style = Style(fill="none")
    gap: int = 16
    padding: int = 12
    bottom: int = 0  # extra room under the children (for arrows routed there)
    x: float = 0
    y: float = 0
    width: float = 0
    height: float = 0

    def measure(self) -> None:
        for child in self.children:
            child.measure()
        gaps = self.gap * (len(self.children) - 1)
        if self.direction == "row":
            inner_w = sum(child.width for child in self.children) + gaps
            inner_h = max(child.height for child in self.children)
        else:
            inner_w = max(child.width for child in self.children)
            inner_h = sum(child.height for child in self.children) + gaps
        self.width = max(inner_w, len(self.title) * CHAR_WIDTH * 1.05) + 2 * self.padding
        self.height = TITLE_HEIGHT + inner_h + 2 * self.padding + self.bottom

    def place(self, x: float, y: float) -> None:
        self.x, self.y = x, y
        cx, cy = x + self.padding, y + self.padding + TITLE_HEIGHT
        row_height = max(child.height for child in self.children)
        for child in self.children:
            # a column's children share its width; a row's leaves share its height
            if self.direction == "column":
                child.width = self.width - 2 * self.padding
            elif isinstance(child, Box):
                child.height = row_height
            child.place(cx, cy)
            if self.direction == "row":
                cx += child.width + self.gap
            else:
                cy += child.height + self.gap

    def boxes(self) -> list[Box | Group]:
        return [self] + [box for child in self.children for box in child.boxes()]


Lane = Callable[["Layout"], float]


@dataclass(frozen=True)
class Arrow:
    """An orthogonal arrow from one box's side to another's.

    ``lanes`` are alternately an x then a y (or a y then an x, when ``start`` is top or bottom) the
    path passes through, each computed from the laid-out boxes; the path then turns into ``end``.
    """

    source: str
    start: str  # the side it leaves: left, right, top, bottom
    target: str
    end: str  # the side it enters
    label: str = ""
    lanes: Sequence[Lane] = ()
    dashed: bool = False
    label_at: int = 1  # which segment carries the label
    label_dy: float = -5
    start_shift: float = 0  # along the side, from its middle
    end_shift: float = 0


class Layout:
    """The laid-out boxes, by id, for the arrows' lanes."""

    def __init__(self, root: Group | Box) -> None:
        self.by_id = {box.id: box for box in root.boxes()}

    def __getitem__(self, box_id: str) -> Box | Group:
        return self.by_id[box_id]

    def left(self, box_id: str) -> float:
        return self[box_id].x

    def right(self, box_id: str) -> float:
        box = self[box_id]
        return box.x + box.width

    def top(self, box_id: str) -> float:
        return self[box_id].y

    def bottom(self, box_id: str) -> float:
        box = self[box_id]
        return box.y + box.height

    def anchor(self, box_id: str, side: str, shift: float) -> tuple[float, float]:
        box = self[box_id]
        mid_x, mid_y = box.x + box.width / 2, box.y + box.height / 2
        return {
            "left": (box.x, mid_y + shift),
            "right": (box.x + box.width, mid_y + shift),
            "top": (mid_x + shift, box.y),
            "bottom": (mid_x + shift, box.y + box.height),
        }[side]


def _path(layout: Layout, arrow: Arrow) -> list[tuple[float, float]]:
    start = layout.anchor(arrow.source, arrow.start, arrow.start_shift)
    end = layout.anchor(arrow.target, arrow.end, arrow.end_shift)
    points = [start]
    horizontal = arrow.start in ("left", "right")
    for lane in arrow.lanes:
        value = lane(layout)
        x, y = points[-1]
        points.append((value, y) if horizontal else (x, value))
        horizontal = not horizontal
    x, y = points[-1]
    if end[0] != x and end[1] != y:
        points.append((end[0], y) if horizontal else (x, end[1]))
    points.append(end)
    return points


def _number(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _text(x: float, y: float, text: str, *, size: int = 12, weight: str = "normal", color: str = "#222222",
          anchor: str = "start") -> str:
    return (f'<text x="{_number(x)}" y="{_number(y)}" font-size="{size}" font-weight="{weight}" fill="{color}" '
            f'text-anchor="{anchor}">{escape(text)}</text>')


def _rect(box: Box | Group) -> str:
    style = box.style
    dash = ' stroke-dasharray="6 4"' if style.dashed else ""
    return (f'<rect x="{_number(box.x)}" y="{_number(box.y)}" width="{_number(box.width)}" height="{_number(box.height)}" '
            f'rx="{style.rounded}" fill="{style.fill}" stroke="{style.stroke}" stroke-width="1.2"{dash}/>')


def _box_svg(box: Box | Group) -> list[str]:
    out = [_rect(box)]
    if box.title:
        out.append(_text(box.x + box.padding, box.y + box.padding + 12, box.title, size=13, weight="bold",
                         color=box.style.title_color))
    if isinstance(box, Box):
        for index, line in enumerate(box.lines):
            out.append(_text(box.x + box.padding, box.y + box.padding + TITLE_HEIGHT + 12 + index * LINE_HEIGHT, line))
    return out


def _arrow_svg(layout: Layout, arrow: Arrow) -> list[str]:
    points = _path(layout, arrow)
    dash = ' stroke-dasharray="5 4"' if arrow.dashed else ""
    d = " ".join(f"{'M' if i == 0 else 'L'}{_number(x)},{_number(y)}" for i, (x, y) in enumerate(points))
    out = [f'<path d="{d}" fill="none" stroke="#1f4e79" stroke-width="1.6"{dash} marker-end="url(#arrow)"/>']
    if arrow.label:
        index = min(arrow.label_at, len(points) - 1)
        (x1, y1), (x2, y2) = points[index - 1], points[index]
        out.append(_text((x1 + x2) / 2, (y1 + y2) / 2 + arrow.label_dy, arrow.label, size=11, color="#1f4e79",
                         anchor="middle"))
    return out


@dataclass
class Diagram:
    title: str
    root: Group
    arrows: Sequence[Arrow] = ()
    notes: Sequence[str] = field(default_factory=tuple)
    margin: int = 16

    def svg(self) -> str:
        self.root.measure()
        self.root.place(self.margin, self.margin + 28)
        layout = Layout(self.root)
        for arrow in self.arrows:  # every id named exists (a typo fails here, not as a stray line)
            layout[arrow.source], layout[arrow.target]
        width = self.root.width + 2 * self.margin
        notes_top = self.root.y + self.root.height + 22
        height = notes_top + len(self.notes) * LINE_HEIGHT + self.margin
        body = [_text(self.margin, self.margin + 14, self.title, size=16, weight="bold")]
        for box in self.root.boxes():
            body.extend(_box_svg(box))
        for arrow in self.arrows:
            body.extend(_arrow_svg(layout, arrow))
        for index, note in enumerate(self.notes):
            body.append(_text(self.margin, notes_top + index * LINE_HEIGHT, note, size=11, color="#444444"))
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_number(width)}" height="{_number(height)}" '
                f'viewBox="0 0 {_number(width)} {_number(height)}" font-family="{FONT}">')
        defs = ('<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
                'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#1f4e79"/></marker></defs>')
        background = f'<rect width="{_number(width)}" height="{_number(height)}" fill="#ffffff"/>'
        return "\n".join([head, defs, background, *body, "</svg>"]) + "\n"


def diagram_main(draw: Callable[[], Diagram], default: Path, script: str, description: str,
                 argv: list[str] | None = None) -> int:
    """A diagram script's command line: write ``draw()``'s SVG to ``--output`` (``default``), or
    with ``--check`` exit 1 when the file is not that output."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="exit 1 if the SVG file is not this output")
    parser.add_argument("--output", type=Path, default=default, help=f"the SVG file (default {default})")
    args = parser.parse_args(argv)
    svg = draw().svg()
    if args.check:
        if not args.output.is_file() or args.output.read_text(encoding="utf-8") != svg:
            print(f"{args.output} is stale: run python {script}", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(svg, encoding="utf-8")
    return 0
