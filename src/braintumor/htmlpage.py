"""Building blocks of braintumor's self-contained HTML pages (run, cross-validation and audit reports).

Every piece returns an HTML string; every text that comes from files (names, class labels, messages) goes through
:func:`_esc`. Images are embedded as ``data:`` URIs, so a page needs no network and no other file.

Example:
    >>> from braintumor.htmlpage import _table
    >>> _table(["class", "images"], [["no <b>", 98]])
    '<table><tr><th>class</th><th>images</th></tr><tr><td>no &lt;b&gt;</td><td>98</td></tr></table>'
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import __version__
from .rundir import atomic_write_text

Section = tuple[str, str, Callable]  # (html id, heading, function of the page's context -> HTML)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.3em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.muted{color:#777}.warn{background:#fff4e5;border-left:4px solid #f0a030;padding:.5em 1em}
.grid{display:flex;flex-wrap:wrap;gap:10px}.grid figure{margin:0;width:140px;font-size:12px}
.grid img{width:140px;height:140px;object-fit:contain;background:#000}
.ok{color:#1a7f37}.bad{color:#c62828}img.fig{max-width:100%}nav a{margin-right:.8em}
.grid figcaption{overflow-wrap:anywhere}.grid.small figure{width:96px}.grid.small img{width:96px;height:96px}
ul.findings{padding-left:1.2em}ul.findings li{margin:.3em 0}ul.findings li.warn{padding:.2em .6em}
"""



def _esc(x) -> str:
    """HTML-escaped text; a file name that is not UTF-8 shows its odd bytes as ``\\xNN``
    (:func:`braintumor.display.printable`)."""
    from .display import printable

    return html.escape(printable(x))


def _write_page(path: Path, page: str) -> None:
    """Write the page atomically; any text that escaped :func:`_esc` cannot make it fail (``\\udcff``)."""
    atomic_write_text(path, page.encode("utf-8", "backslashreplace").decode("utf-8"))


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _img_file(path: Path, alt: str) -> str:
    if not Path(path).is_file():
        return f'<p class="muted">{_esc(Path(path).name)} not available.</p>'
    return f'<img class="fig" alt="{_esc(alt)}" src="{_png_uri(Path(path).read_bytes())}">'


def _array_uri(img: np.ndarray, size: int = 140) -> str:
    from PIL import Image

    im = Image.fromarray(np.asarray(img, dtype=np.uint8))
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return _png_uri(buf.getvalue())


def _figure(uri: str, name: str, caption: str) -> str:
    """One thumbnail of a ``.grid`` (none when ``uri`` is empty); ``caption`` is HTML (escape what goes in)."""
    img = f'<img alt="{_esc(name)}" src="{uri}">' if uri else ""
    return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"


def _section(sid: str, title: str, build: Callable, ctx) -> str:
    try:
        body = build(ctx)
    except Exception as exc:  # noqa: BLE001 - one broken section must not lose the page
        body = f'<p class="warn">This section could not be built: {_esc(type(exc).__name__)}: {_esc(exc)}</p>'
    return f'<section id="{sid}">\n<h2>{_esc(title)}</h2>\n{body}\n</section>\n'


def _page(title: str, subtitle: str, sections: list[Section], ctx) -> str:
    """The whole page: title, navigation, and each section built by its function of ``ctx``."""
    nav = " ".join(f'<a href="#{sid}">{_esc(t)}</a>' for sid, t, _ in sections)
    body = "".join(_section(sid, t, build, ctx) for sid, t, build in sections)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(title)}</title>"
            f"<style>{CSS}</style></head><body>\n<h1>{_esc(title)}</h1>\n<p class=\"muted\">{_esc(subtitle)}</p>\n"
            f"<nav>{nav}</nav>\n{body}<p class=\"muted\">braintumor {__version__}, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}. Research use only.</p>\n</body></html>\n")


def _table(header: list[str], rows: list[list]) -> str:
    """A table; a header of empty strings is left out (a two-column "name | value" table)."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{f'<tr>{head}</tr>' if any(header) else ''}{body}</table>"


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{_esc(x)}</li>" for x in items) + "</ul>"

def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)
