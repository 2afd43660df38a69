"""The report document: one sequence of headings, paragraphs, tables and figures, written twice, as Markdown
(plots as PNG files beside it) and as one self-contained HTML page (plots embedded, all text escaped).
`prefloop.eval.report_run` fills it with the sections of a run."""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
from pathlib import Path


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}" if 1e-3 <= abs(v) < 1e4 or v == 0 else f"{v:.3g}"
    return str(v)


def decimals(half_width: float | None, lo: int = 1, hi: int = 3) -> int:
    """Digits after the point that an interval of this half-width supports: two significant digits of the
    half-width, between `lo` and `hi`."""
    if half_width is None or not math.isfinite(half_width) or half_width <= 0:
        return hi
    return max(lo, min(hi, 1 - math.floor(math.log10(half_width))))


def fmt_ci(iv: dict | None, key: str = "mean", sign: bool = False) -> str:
    """'0.45 [0.31, 0.59]' from {key, ci_low, ci_high}, precision from the interval's width."""
    if not iv or iv.get(key) is None or not math.isfinite(iv[key]):
        return "n/a"
    lo, hi = iv.get("ci_low"), iv.get("ci_high")
    ok = lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi)
    n = decimals((hi - lo) / 2 if ok else None)
    f = (lambda v: f"{v:+.{n}f}") if sign else (lambda v: f"{v:.{n}f}")  # noqa: E731
    zero = lambda t: t.replace("-0." + "0" * n, "0." + "0" * n).replace("+0." + "0" * n, "0." + "0" * n)  # noqa: E731
    return zero(f(iv[key])) + (f" [{zero(f(lo))}, {zero(f(hi))}]" if ok else "")


class Cell(str):
    """A table cell with an HTML class (the Markdown shows `md`, e.g. the text in bold)."""

    def __new__(cls, text: str, css: str = "", md: str | None = None):
        obj = super().__new__(cls, text)
        obj.css, obj.md = css, md
        return obj


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip() or "(empty)"


class Doc:
    """Collects headings, paragraphs, tables and figures; renders Markdown and self-contained HTML."""

    def __init__(self, out: Path):
        self.out, self.md, self.html, self.figures = out, [], [], []

    def heading(self, text: str, level: int = 2, anchor: str | None = None) -> None:
        self.md += (([f'<a id="{anchor}"></a>', ""] if anchor else []) + ["#" * level + " " + text, ""])
        ident = f' id="{html.escape(anchor)}"' if anchor else ""
        self.html.append(f"<h{level}{ident}>{html.escape(text)}</h{level}>")

    def box(self, title: str, items: list[tuple[str, str | None]], css: str, empty: str) -> None:
        """A highlighted list (text, optional #anchor link) under a title; `empty` when there are no items."""
        self.md += [f"> **{title}**", ">"]
        self.md += [f"> - {t}" + (f" ([samples](#{a}))" if a else "") for t, a in items] or [f"> {empty}"]
        self.md.append("")
        lis = "".join(f"<li>{html.escape(t)}" + (f' (<a href="#{html.escape(a)}">samples</a>)' if a else "")
                      + "</li>" for t, a in items)
        body = f"<ul>{lis}</ul>" if items else f"<p>{html.escape(empty)}</p>"
        self.html.append(f'<div class="box {html.escape(css)}"><strong>{html.escape(title)}</strong>{body}</div>')

    def raw(self, html_text: str, md: list[str] | None = None) -> None:
        """Markup the caller built (and escaped) itself, e.g. <details>; `md` lines for the Markdown twin."""
        self.html.append(html_text)
        self.md += md or []

    def para(self, text: str) -> None:
        self.md += [text, ""]
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: list[str], rows: list[list], cls: str = "") -> None:
        cells = [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows]
        md = [[c.md if isinstance(c, Cell) and c.md else c for c in r] for r in cells]
        self.md += ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
        self.md += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in md] + [""]
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f'<td class="{_css(c)}">{html.escape(c)}</td>' for c in r) + "</tr>"
                       for r in cells)
        self.html.append(f'<table class="{html.escape(cls)}"><thead><tr>{head}</tr></thead>'
                         f"<tbody>{body}</tbody></table>")

    def figure(self, name: str, fig, caption: str) -> None:
        """Save a matplotlib figure as OUT/name (PNG) and embed the same bytes in the HTML."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        data = buf.getvalue()
        atomic_bytes(self.out / name, data)
        self.figures.append(name)
        self.md += [f"![{caption}]({name})", ""]
        b64 = base64.b64encode(data).decode("ascii")
        self.html.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _css(c: str) -> str:
    """Numbers right-aligned with tabular digits, so a column of them lines up."""
    num = "num" if _NUM.match(c) else ""
    return html.escape(" ".join(x for x in (num, getattr(c, "css", "")) if x))


_NUM = re.compile(r"^[+-]?(\d|n/a$)")

CSS = """body{font-family:system-ui,sans-serif;max-width:1280px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f3f3f3}img{max-width:100%}figure{margin:1em 0}figcaption{color:#666;
font-size:0.9em}td{max-width:520px}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.worse{background:#fde2e0;font-weight:600}td.better{background:#e3f4e1}.box{border:2px solid #c33;border-radius:6px;
padding:0.6em 1em;margin:1em 0;background:#fff6f5}.box.ok{border-color:#4a7;background:#f3fbf2}.note{color:#555;
font-size:0.92em}details{margin:0.5em 0 1.5em}table.stages,table.win-rates{font-size:0.9em}
table.stages td:first-child{min-width:15em}"""


def atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
