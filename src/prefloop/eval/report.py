"""The report document: one sequence of headings, paragraphs, tables and figures, written twice, as Markdown
(plots as PNG files beside it) and as one self-contained HTML page (plots embedded, all text escaped).
`prefloop.eval.report_cmd` fills it with the sections of a run."""

from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path

STAGE_COLUMNS = [
    ("gold_reward_mean", "gold reward"), ("gold_win_rate_vs_sft", "gold win rate vs SFT"),
    ("reward_model_mean", "reward model"), ("kl_to_sft", "KL to SFT (k1)"), ("kl_to_sft_k3", "KL to SFT (k3)"),
    ("distinct_1", "distinct-1"), ("distinct_2", "distinct-2"), ("self_bleu", "self-BLEU (per prompt)"),
    ("mean_response_tokens", "response tokens"), ("no_eos_fraction", "never ends"),
    ("hallucination_rate", "made-up facts"), ("needless_refusal_rate", "needless refusals"),
    ("harmful_compliance_rate", "harmful compliance"),
]


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}" if 1e-3 <= abs(v) < 1e4 or v == 0 else f"{v:.3g}"
    return str(v)


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip() or "(empty)"


class Doc:
    """Collects headings, paragraphs, tables and figures; renders Markdown and self-contained HTML."""

    def __init__(self, out: Path):
        self.out, self.md, self.html, self.figures = out, [], [], []

    def heading(self, text: str, level: int = 2) -> None:
        self.md += ["#" * level + " " + text, ""]
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md += [text, ""]
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: list[str], rows: list[list], cls: str = "") -> None:
        cells = [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows]
        self.md += ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
        self.md += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in cells] + [""]
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells)
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


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f3f3f3}img{max-width:100%}figure{margin:1em 0}figcaption{color:#666;
font-size:0.9em}td{max-width:520px}"""


def atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
