"""Self-contained HTML pages from the Jinja2 templates in reports/templates/.

A report is one file a colleague can open from disk or an e-mail: the CSS and the table sorter are inline,
PNGs are data URLs, nothing is fetched from the network, and without JavaScript the tables and figures read
the same (only the click-to-sort is lost). Python gathers plain dicts and lists; the templates decide the
page's shape. Autoescaping is on, so a class name, an override or an error message shows as text, never
as markup; a template that reads a key the data lacks fails (StrictUndefined) instead of printing nothing.
"""

from __future__ import annotations

import base64
import math
from functools import cache
from pathlib import Path
from typing import Any

import jinja2


def fmt(value: Any, spec: str | None = None) -> str:
    """How a page shows a value: accuracies to 4 places, counts with thousands separators, None as blank;
    `spec` (a format spec such as ",.1f") overrides the choice for a number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if spec is not None:
        return format(value, spec)
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


def figure(path: Path, caption: str) -> dict[str, Any]:
    """A PNG for the `figure` macro: its bytes as base64, or None when the file was not written."""
    png = base64.b64encode(path.read_bytes()).decode("ascii") if path.is_file() else None
    return {"caption": caption, "name": path.name, "png": png}


@cache
def environment() -> jinja2.Environment:
    """The templates shipped in the package (the wheel carries reports/templates/)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cnn_train.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(fmt=fmt, si=si)
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
