"""Self-contained HTML pages for the run and sweep reports: inline CSS, PNGs as base64, a tiny table sorter.

A report is one file a colleague can open from disk or an e-mail: nothing is fetched from the network, and
without JavaScript the tables and figures read the same (only the click-to-sort is lost).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;
color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th{background:#f4f4f4}tfoot td{font-weight:600}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
.facts td:first-child{font-weight:600;background:#fafafa}
img{max-width:100%;height:auto;border:1px solid #eee}
figure{display:inline-block;margin:.4em 1em .4em 0;vertical-align:top}figcaption{color:#666;font-size:.85em}
pre{background:#f6f8fa;padding:.8em;overflow:auto;font-size:.85em}
.note{color:#666;font-style:italic}
"""

# Click a header: sort its table's rows by that column (numbers numerically, empty cells last), click again
# to reverse. Cells may carry the exact value in data-sort when their text is formatted.
SORTER = """
(function(){
function key(td){var v=td.getAttribute('data-sort');if(v===null)v=td.textContent.trim();
 var n=Number(v);return v===''?null:(isNaN(n)?v.toLowerCase():n);}
function cmp(a,b){if(a===null)return b===null?0:1;if(b===null)return -1;
 if(typeof a===typeof b)return a<b?-1:a>b?1:0;return typeof a==='number'?-1:1;}
document.querySelectorAll('table.sortable').forEach(function(table){
 var heads=table.tHead.rows[0].cells;
 Array.prototype.forEach.call(heads,function(th){th.tabIndex=0;th.title='click to sort';
  th.addEventListener('click',function(){
   var asc=th.getAttribute('aria-sort')!=='ascending',i=th.cellIndex,body=table.tBodies[0];
   Array.prototype.forEach.call(heads,function(h){h.removeAttribute('aria-sort');});
   th.setAttribute('aria-sort',asc?'ascending':'descending');
   var rows=Array.prototype.slice.call(body.rows);
   rows.sort(function(r,s){var a=key(r.cells[i]),b=key(s.cells[i]);
    if(a===null||b===null)return cmp(a,b);return asc?cmp(a,b):cmp(b,a);});
   rows.forEach(function(r){body.appendChild(r);});});});});
})();
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """How a table shows a value: accuracies to 4 places, counts with thousands separators, None as blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def si(value: float | None, unit: str = "") -> str:
    """1.23 G, 456.00 k: FLOPs and parameter counts at a glance."""
    if value is None:
        return ""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".strip()


def cell(value: Any, shown: str | None = None) -> str:
    """A <td>; numbers align right and sort by their exact value, whatever their text."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    text = fmt(value) if shown is None else shown
    if not numeric:
        return f"<td>{esc(text)}</td>"
    return f'<td class="num" data-sort="{esc(value)}">{esc(text)}</td>'


def _row(row: Sequence[Any]) -> str:
    return "<tr>" + "".join(cell(*v) if isinstance(v, tuple) else cell(v) for v in row) + "</tr>\n"


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], sortable: bool = True, foot: Sequence[Any] = ()
) -> str:
    """A table; a row item may be a value or a (value, shown text) pair; `foot` (a total) is never sorted."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(_row(row) for row in rows)
    tfoot = f"<tfoot>{_row(foot)}</tfoot>" if foot else ""
    cls = ' class="sortable"' if sortable else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody>{tfoot}</table>"


def facts(items: Iterable[tuple[str, Any]]) -> str:
    """Key/value table (no sorting: its order is the reading order)."""
    rows = "".join(f"<tr><td>{esc(k)}</td>{cell(v)}</tr>" for k, v in items)
    return f'<table class="facts"><tbody>{rows}</tbody></table>'


def figure(path: Path, caption: str) -> str:
    """The PNG at `path` inline (base64), or a note saying it is missing."""
    if not path.is_file():
        return f'<p class="note">{esc(caption)}: {esc(path.name)} was not written.</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def section(title: str, *parts: str) -> str:
    return f"<section><h2>{esc(title)}</h2>\n" + "\n".join(parts) + "\n</section>"


def page(title: str, subtitle: str, sections: Iterable[str]) -> str:
    """The whole document: title, subtitle line, sections, then the sorter (it runs after the tables)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
        f'<h1>{esc(title)}</h1><p class="sub">{esc(subtitle)}</p>\n'
        + "\n".join(sections)
        + f"\n<script>{SORTER}</script>\n</body></html>\n"
    )
