"""A minimal exporter of an executed notebook to one standalone HTML file (no nbconvert needed).

Markdown cells are rendered with markdown-it-py when it is installed (else shown as text); code cells show
their source and outputs: streams and text as <pre>, image/png inline (base64), text/html as is, errors
with ANSI colour codes stripped.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

STYLE = """<style>
body{font-family:sans-serif;max-width:1400px;margin:20px auto;padding:0 16px;color:#222}
.cell{margin:14px 0}
.src{background:#f5f5f5;border-left:3px solid #4a7ab5;padding:6px 8px;overflow-x:auto;font-size:12px}
.out{padding:4px 8px;overflow-x:auto}
.out pre{font-size:12px;margin:2px 0;white-space:pre-wrap}
.err pre{background:#fdecea;color:#8a1c1c}
.out img{max-width:100%}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}
</style>"""


def markdown_html(text: str) -> str:
    try:
        from markdown_it import MarkdownIt
    except ImportError:  # pragma: no cover
        return f"<pre>{html.escape(text)}</pre>"
    return MarkdownIt("commonmark").enable("table").render(text)


def text_of(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def output_html(output: dict) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        return f"<pre>{html.escape(ANSI.sub('', text_of(output.get('text', ''))))}</pre>"
    if kind == "error":
        trace = ANSI.sub("", "\n".join(output.get("traceback", [])))
        return f'<div class="err"><pre>{html.escape(trace)}</pre></div>'
    data = output.get("data", {})
    if "text/html" in data:
        return text_of(data["text/html"])
    if "image/png" in data:
        return f'<img src="data:image/png;base64,{text_of(data["image/png"]).strip()}">'
    if "text/markdown" in data:
        return markdown_html(text_of(data["text/markdown"]))
    if "text/plain" in data:
        return f"<pre>{html.escape(text_of(data['text/plain']))}</pre>"
    return ""


def notebook_html(nb, title: str = "notebook") -> str:
    parts = [
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>{STYLE}'
        "</head><body>"
    ]
    for cell in nb.cells:
        source = text_of(cell.get("source", ""))
        if cell.cell_type == "markdown":
            parts.append(f'<div class="cell md">{markdown_html(source)}</div>')
        elif cell.cell_type == "code":
            outputs = "".join(output_html(o) for o in cell.get("outputs", []))
            parts.append(
                f'<div class="cell code"><pre class="src">{html.escape(source)}</pre>'
                f'<div class="out">{outputs}</div></div>'
            )
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_notebook_html(nb, path: str | Path, title: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(notebook_html(nb, title or path.stem), encoding="utf-8")
    return path
