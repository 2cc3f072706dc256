"""The report pages: one self-contained HTML file each, readable offline.

Figures are embedded as data: URIs and the style sheet is inline; a Content-Security-Policy
forbids the page every fetch but those data: images, so it cannot reach the network even by
mistake. Every piece of text that comes from a run (recipe names and descriptions come from
users' TOML files) goes through `esc`.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
:root { --fg: #1d2433; --muted: #5d6679; --line: #e2e6ee; --bg: #f5f6fa; --card: #fff;
        --accent: #2f6fb3; --warn-bg: #fff7e0; --warn-line: #efd58a; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif; }
main { max-width: 1140px; margin: 0 auto; padding: 28px 24px 40px; }
header h1 { margin: 0 0 2px; font-size: 28px; letter-spacing: -0.01em; word-break: break-word; }
header .subtitle { color: var(--muted); margin: 0 0 12px; }
.chips { display: flex; flex-wrap: wrap; gap: 6px; margin: 0 0 18px; padding: 0; list-style: none; }
.chips li { background: #e9eef7; color: #29446b; border-radius: 999px; padding: 2px 11px;
            font-size: 13px; }
nav { display: flex; flex-wrap: wrap; gap: 4px 14px; margin: 0 0 18px; font-size: 14px; }
nav a { color: var(--accent); text-decoration: none; }
nav a:hover { text-decoration: underline; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: 12px;
         margin: 0 0 8px; }
.tile { background: var(--card); border: 1px solid var(--line); border-radius: 12px;
        padding: 12px 16px; }
.tile .label { color: var(--muted); font-size: 13px; }
.tile .value { font-size: 26px; font-weight: 650; font-variant-numeric: tabular-nums; }
.tile .detail { color: var(--muted); font-size: 13px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 12px;
          padding: 18px 22px; margin: 18px 0; }
section h2 { margin: 0 0 10px; font-size: 19px; }
section p { margin: 6px 0 12px; }
figure { margin: 6px 0 12px; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; text-align: center; }
.columns { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 16px;
           align-items: start; }
table { border-collapse: collapse; font-size: 14px; margin: 4px 0 8px; }
th, td { padding: 5px 12px 5px 0; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: 13px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td code { font-size: 13px; word-break: break-all; }
.scroll { overflow-x: auto; }
pre { background: #f3f5f9; border-radius: 8px; padding: 12px 14px; overflow-x: auto;
      font-size: 12.5px; line-height: 1.4; margin: 0; }
.notes { background: var(--warn-bg); border: 1px solid var(--warn-line); border-radius: 10px;
         padding: 8px 16px; margin: 12px 0; }
.notes ul { margin: 6px 0; padding-left: 20px; }
.good { color: #1f7a3a; } .bad { color: #b02a2a; }
footer { color: var(--muted); font-size: 13px; margin-top: 24px; }
@media print { body { background: #fff; } section, .tile { break-inside: avoid; } nav { display: none; } }
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(png: bytes, alt: str, caption: str = "", name: str = "") -> str:
    """An embedded PNG; `name` is the PNG file written beside the page."""
    attrs = f' data-file="{esc(name)}"' if name else ""
    text = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{data_uri(png)}" alt="{esc(alt)}"{attrs}>{text}</figure>'


@dataclass
class Cell:
    text: str
    numeric: bool = False
    css: str = ""  # a class name: good, bad


def table(headers: Sequence[str | Cell] | None, rows: Iterable[Sequence[str | Cell]]) -> str:
    """A table of text cells (escaped here); no header row when `headers` is None."""
    def cell(tag: str, c: str | Cell) -> str:
        c = c if isinstance(c, Cell) else Cell(c)
        classes = " ".join(filter(None, ["num" if c.numeric else "", c.css]))
        attr = f' class="{classes}"' if classes else ""
        return f"<{tag}{attr}>{esc(c.text)}</{tag}>"

    head = ("<thead><tr>" + "".join(cell("th", h) for h in headers) + "</tr></thead>"
            if headers is not None else "")
    body = "".join("<tr>" + "".join(cell("td", c) for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table>{head}<tbody>{body}</tbody></table></div>'


def num(text: str, css: str = "") -> Cell:
    return Cell(text, numeric=True, css=css)


@dataclass
class Tile:
    label: str
    value: str
    detail: str = ""


@dataclass
class Section:
    anchor: str
    title: str
    html: str  # already escaped: built from the helpers above


@dataclass
class Page:
    title: str
    heading: str
    subtitle: str = ""
    chips: list[str] = field(default_factory=list)
    tiles: list[Tile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    footer: str = ""

    def render(self) -> str:
        chips = "".join(f"<li>{esc(c)}</li>" for c in self.chips)
        tiles = "".join(
            f'<div class="tile"><div class="label">{esc(t.label)}</div>'
            f'<div class="value">{esc(t.value)}</div>'
            + (f'<div class="detail">{esc(t.detail)}</div>' if t.detail else "") + "</div>"
            for t in self.tiles)
        notes = ("<div class=\"notes\" role=\"note\"><ul>"
                 + "".join(f"<li>{esc(n)}</li>" for n in self.notes) + "</ul></div>"
                 if self.notes else "")
        nav = "".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in self.sections)
        sections = "".join(f'<section id="{esc(s.anchor)}"><h2>{esc(s.title)}</h2>{s.html}</section>'
                           for s in self.sections)
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="generator" content="mnistlab">
<title>{esc(self.title)}</title>
<style>{STYLE}</style>
</head>
<body>
<main>
<header>
<h1>{esc(self.heading)}</h1>
{f'<p class="subtitle">{esc(self.subtitle)}</p>' if self.subtitle else ''}
{f'<ul class="chips">{chips}</ul>' if chips else ''}
</header>
{f'<nav aria-label="sections">{nav}</nav>' if len(self.sections) > 1 else ''}
{f'<div class="tiles">{tiles}</div>' if tiles else ''}
{notes}
{sections}
<footer>{esc(self.footer)}</footer>
</main>
</body>
</html>
"""


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def paragraph(text: str) -> str:
    return f"<p>{esc(text)}</p>"
