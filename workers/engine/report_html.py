"""The report's HTML frame: the page around the sections, its inline CSS and escaped tables.

The page loads nothing: its Content-Security-Policy (also sent as a header by the service) allows inline styles
and data: images only, no script; the favicon is an empty data: URL so a browser does not ask for /favicon.ico.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Sequence
from html import escape

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

CSS = """
:root{--fg:#1d232b;--muted:#5b6675;--line:#dde2e8;--soft:#f5f7fa;--good:#1b7f3b;--bad:#c62828;--accent:#1f5fbf}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%;text-size-adjust:100%}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:var(--fg);background:#fff}
main{max-width:60rem;margin:0 auto;padding:1rem 1.2rem 2rem}
h1{font-size:1.5rem;margin:.3rem 0}
h2{font-size:1.2rem;margin:2rem 0 .6rem;padding-bottom:.2rem;border-bottom:1px solid var(--line)}
h3{font-size:1rem;margin:1.2rem 0 .4rem}
.subtitle,.small,figcaption,footer{color:var(--muted);font-size:.85rem}
.subtitle{overflow-wrap:anywhere}
.verdict{border-left:.4rem solid var(--muted);background:var(--soft);padding:.1rem 1rem .4rem;margin-top:1rem}
.verdict h2{border:0;margin-top:.6rem}
.verdict.good{border-color:var(--good)}
.verdict.bad{border-color:var(--bad);background:#fdf2f2}
.verdict li{margin:.2rem 0;overflow-wrap:anywhere}
.headline{font-size:1.1rem;font-weight:600}
.badge{display:inline-block;font-size:.8rem;font-weight:500;padding:0 .55rem;border-radius:1rem;background:#e3e9f0}
.table-wrap{overflow-x:auto;margin:.6rem 0;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%;font-size:.9rem;font-variant-numeric:tabular-nums}
th,td{padding:.3rem .55rem;border-bottom:1px solid var(--line);text-align:right;vertical-align:top}
th.l,td.l{text-align:left}
th:first-child,td:first-child{overflow-wrap:anywhere;min-width:7rem}
thead th{background:var(--soft);font-weight:600}
tr.chosen td{background:#fff4d1;font-weight:600}
figure{margin:1rem 0}
figure img{display:block;width:100%;max-width:42rem;height:auto}
footer{margin-top:2.5rem;border-top:1px solid var(--line);padding-top:.6rem;overflow-wrap:anywhere}
@media (max-width:40rem){
 body{font-size:14px} main{padding:.6rem .7rem 1.5rem} th,td{padding:.25rem .3rem} table{font-size:.82rem}
}
@media print{
 @page{margin:1.5cm}
 body{font-size:10pt} main{max-width:none;padding:0}
 .verdict,.verdict.bad,thead th{background:none}
 h2,h3{break-after:avoid} figure,tr{break-inside:avoid}
 .table-wrap{overflow:visible}
}
"""


def table(
    head: Sequence[object],
    rows: Sequence[Sequence[object]],
    row_class: Callable[[int], str] | None = None,
    left: int = 1,
) -> str:
    """A table whose every header and cell is escaped text, wrapped so a wide one scrolls on a phone; the first
    `left` columns (names, words) are aligned left, the others (numbers) right."""

    def cell(tag: str, j: int, text: object, extra: str = "") -> str:
        cls = ' class="l"' if j < left else ""
        return f"<{tag}{extra}{cls}>{escape(str(text))}</{tag}>"

    th = "".join(cell("th", j, h, ' scope="col"') for j, h in enumerate(head))
    body = []
    for i, row in enumerate(rows):
        cls = row_class(i) if row_class else ""
        attr = f' class="{escape(cls)}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(cell("td", j, c) for j, c in enumerate(row)) + "</tr>")
    return f'<div class="table-wrap"><table><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def page(*, title: str, subtitle: str, body: str, footer: str) -> str:
    """The whole document. `title` is plain text (escaped here); `subtitle`, `body` and `footer` are HTML."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{escape(CSP)}">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>{escape(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<header><h1>Secateurs report</h1><p class="subtitle">{subtitle}</p></header>
{body}
<footer>{footer}</footer>
</main>
</body>
</html>
"""


# --------------------------------------------------------------------------- formatting values


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _accuracy_like(name: str) -> bool:
    return "accuracy" in str(name)


def _int(v) -> str:
    return f"{int(v):,}" if _finite(v) else "—"


def _bytes(v) -> str:
    if not _finite(v):
        return "—"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.1f} {unit}"
    return f"{int(v)} B"


def _pct(v) -> str:
    return f"{v:.1%}" if _finite(v) else "—"


def _metric(name: str, v) -> str:
    if not _finite(v):
        return "—"
    return f"{v:.2%}" if _accuracy_like(name) else f"{v:.4g}"


def _ratio_change(b, a, smaller: str = "smaller", larger: str = "larger") -> str:
    if not (_finite(b) and _finite(a)) or b == 0:
        return ""
    if a == b:
        return "unchanged"
    r = a / b
    return f"{1 - r:.0%} {smaller}" if r < 1 else f"{r - 1:.0%} {larger}"


def _metric_change(name: str, b, a) -> str:
    if not (_finite(b) and _finite(a)):
        return ""
    if _accuracy_like(name):
        return f"{(a - b) * 100:+.1f} points"
    return f"{(a - b) / abs(b):+.1%}" if b else f"{a - b:+.4g}"


def _e(v) -> str:
    return escape(str(v), quote=True)


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def _list(v) -> list:
    return v if isinstance(v, list) else []


def _figure(svg: bytes | None, alt: str, caption: str) -> str:
    if not svg:
        return ""
    data = base64.b64encode(svg).decode("ascii")
    return (
        f'<figure><img src="data:image/svg+xml;base64,{data}" alt="{_e(alt)}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )
