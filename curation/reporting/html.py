"""The report as one self-contained HTML page: inline CSS, no script, every image a base64 data URI, every string
from the outside (paths, class names, versions, notes) escaped. It opens offline and can be mailed as one file."""

from __future__ import annotations

import base64
import html
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from curation.reporting.data import ReportData
from curation.reporting.figures import Figure

COUNT_ROWS = (  # (key in counts, label)
    ("items", "pool items (distinct images)"),
    ("scored", "scored by the current model"),
    ("unscored", "not scored yet"),
    ("failed", "unreadable"),
    ("invalid", "invalid model output"),
    ("selected", "selected"),
    ("queued", "queued in Label Studio"),
    ("labeled", "labeled"),
    ("skipped", "skipped by labelers"),
)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1.5rem; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2rem; }
.meta { color: #555; font-size: 0.9rem; } .meta code { font-size: 0.85rem; }
.notice { background: #fff6e0; border: 1px solid #f0c36d; padding: 0.8rem 1rem; border-radius: 4px; }
.cards { display: flex; flex-wrap: wrap; gap: 0.6rem; margin: 0.8rem 0; }
.card { border: 1px solid #ddd; border-radius: 4px; padding: 0.4rem 0.8rem; min-width: 7.5rem; }
.card .n { font-size: 1.4rem; font-weight: 600; } .card .k { font-size: 0.8rem; color: #555; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85rem; color: #555; max-width: 60rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.6rem 0; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.queue { display: flex; flex-wrap: wrap; gap: 0.6rem; }
.thumb { width: 150px; font-size: 0.75rem; border: 1px solid #ddd; border-radius: 4px; padding: 0.3rem; }
.thumb img { display: block; max-width: 140px; max-height: 140px; margin: 0 auto 0.2rem; }
.thumb .path { word-break: break-all; color: #555; } .missing { color: #a33; padding: 2rem 0; text-align: center; }
footer { margin-top: 2rem; font-size: 0.8rem; color: #777; }
"""


def e(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def data_uri(mime: str, payload: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def _figure(fig: Figure) -> str:
    width, height = png_size(fig.png)
    return (
        f'<figure id="fig-{e(fig.name)}"><img src="{data_uri("image/png", fig.png)}" alt="{e(fig.title)}" '
        f'width="{width}" height="{height}"><figcaption>{e(fig.caption)}</figcaption></figure>'
    )


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[int] = ()) -> str:
    nums = set(numeric)
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i in nums else ''}>{e(v)}</td>" for i, v in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render(data: ReportData, figures: Sequence[Figure]) -> str:
    by_name = {f.name: f for f in figures}
    parts: list[str] = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>curate report — {e(data.current_model or 'no model yet')}</title>",
        f"<style>{CSS}</style></head><body>",
        "<header><h1>curate report</h1>",
        f'<p class="meta">database <code>{e(data.database)}</code> · pool <code>{e(data.pool or "all pools")}</code>'
        f" · current model <code>{e(data.current_model or '—')}</code>"
        f"{f' ({e(data.task)})' if data.task else ''} · generated {e(data.generated_at.strftime('%Y-%m-%d %H:%M UTC'))}"
        "</p></header>",
    ]
    if data.empty:
        parts.append(
            '<p class="notice" id="empty">This database is empty: no pool has been scanned and no model used yet. '
            "Run <code>curate score --pool DIR --model MODEL</code> (or <code>curate select</code>) first; the report "
            "then shows the pool, the queue and the model here.</p>"
        )
    parts += _health(data, by_name)
    parts += _uncertainty(data, by_name)
    parts += _embeddings(data, by_name)
    parts += _balance(data, by_name)
    parts += _models(data, by_name)
    parts += _simulation(data, by_name)
    if data.notes:
        parts.append('<section id="notes"><h2>Notes</h2><ul>')
        parts += [f"<li>{e(n)}</li>" for n in data.notes]
        parts.append("</ul></section>")
    parts.append(
        "<footer>Made by <code>curate report</code> from what the database records; Label Studio was not asked. "
        "Self-contained: every image is embedded.</footer></body></html>"
    )
    return "\n".join(parts) + "\n"


def _health(data: ReportData, figures: dict[str, Figure]) -> list[str]:
    cards = "".join(
        f'<div class="card"><div class="n">{e(data.counts.get(key, 0))}</div><div class="k">{e(label)}</div></div>'
        for key, label in COUNT_ROWS
    )
    out = ['<section id="health"><h2>Pool and queue health</h2>', f'<div class="cards">{cards}</div>']
    if "health" in figures:
        out.append(_figure(figures["health"]))
    out.append("</section>")
    return out


def _uncertainty(data: ReportData, figures: dict[str, Figure]) -> list[str]:
    if "uncertainty" not in figures:
        return []
    rows = []
    for d in data.distributions:
        q = d.quantiles()
        rows.append(
            [
                d.version + (" (current)" if d.current else ""),
                d.task,
                d.measure,
                len(d.values),
                _fmt(q.get("median"), 3),
                _fmt(q.get("p90"), 3),
                _fmt(q.get("max"), 3),
            ]
        )
    table = _table(["model version", "task", "measure", "remaining items", "median", "p90", "max"], rows, (3, 4, 5, 6))
    return [
        '<section id="uncertainty"><h2>Uncertainty on the remaining pool</h2>',
        _figure(figures["uncertainty"]),
        table,
        "</section>",
    ]


def _embeddings(data: ReportData, figures: dict[str, Figure]) -> list[str]:
    if "embeddings" not in figures and not data.queue:
        return []
    out = ['<section id="embeddings"><h2>Embedding map and the top of the queue</h2>']
    if "embeddings" in figures:
        out.append(_figure(figures["embeddings"]))
    if data.queue:
        out.append(f"<h3>{e(data.queue_source)}</h3>")
        out.append('<div class="queue">')
        for t in data.queue:
            if t.jpeg is not None:
                picture = f'<img src="{data_uri("image/jpeg", t.jpeg)}" alt="{e(t.path)}">'
            else:
                picture = f'<div class="missing">{e(t.problem or "unreadable")}</div>'
            score = "" if t.score is None else f" · uncertainty {t.score:.3f}"
            out.append(
                f'<div class="thumb">{picture}<div><b>#{e(t.position)}</b>{e(score)}</div>'
                f'<div class="path">{e(t.path)}</div></div>'
            )
        out.append("</div>")
    out.append("</section>")
    return out


def _balance(data: ReportData, figures: dict[str, Figure]) -> list[str]:
    b = data.balance
    if b is None or "classes" not in figures:
        return []
    rows = [
        [c, s, f"{s / max(b.n_selected, 1):.0%}", n, f"{n / max(b.n_labeled, 1):.0%}"]
        for c, s, n in zip(b.classes, b.selected, b.labeled, strict=True)
    ]
    return [
        '<section id="classes"><h2>Class balance</h2>',
        _figure(figures["classes"]),
        _table(["class", "selected (predicted)", "share", "labeled", "share"], rows, (1, 2, 3, 4)),
        "</section>",
    ]


def _models(data: ReportData, figures: dict[str, Figure]) -> list[str]:
    if not data.versions:
        return []
    rows = []
    for v in data.versions:
        metric = f"{v['metric']} {v['value']:.4f}" if v.get("metric") and v.get("value") is not None else "—"
        others = ", ".join(
            f"{k} {val:.4f}" if isinstance(val, float) else f"{k} {val}"
            for k, val in sorted((v.get("metrics") or {}).items())
            if k != v.get("metric") and isinstance(val, int | float | str)
        )
        rows.append(
            [
                v["version"],
                v["status"],
                v["task"],
                v["classes"],
                metric,
                others or "—",
                v["n_labeled"] if v.get("n_labeled") is not None else "—",
                v["predictions"],
                v["parent"] or "—",
                (v.get("trained_at") or v.get("created_at") or "")[:16].replace("T", " "),
            ]
        )
    headers = ["version", "status", "task", "classes", "metric", "other metrics", "labels", "predictions", "parent",
               "trained / registered"]  # fmt: skip
    out = ['<section id="models"><h2>Model versions</h2>', _table(headers, rows, (3, 6, 7))]
    if "models" in figures:
        out.append(_figure(figures["models"]))
    out.append("</section>")
    return out


def _simulation(data: ReportData, figures: dict[str, Figure]) -> list[str]:
    sim = data.simulation
    if sim is None or "simulation" not in figures:
        return []
    out = [
        '<section id="simulation"><h2>Simulation</h2>',
        f'<p class="meta">from <code>{e(sim.source)}</code></p>',
        _figure(figures["simulation"]),
    ]
    head = sim.headline or {}
    strategies = head.get("strategies") or {}
    if strategies:
        rows = []
        for name, h in strategies.items():
            fraction = h.get("fraction_of_random_labels")
            needed = h.get("labels_to_reach_random_final")
            rows.append(
                [
                    name,
                    _fmt(h.get("final_metric"), 3),
                    "not reached" if needed is None else f"{needed:.0f}",
                    "—" if fraction is None else f"{fraction:.0%}",
                ]
            )
        target = head.get("random_final_metric")
        out.append(
            f"<p>Labels each strategy needed to reach random's final {e(sim.metric)} ({e(_fmt(target, 3))} with "
            f"{e(head.get('random_final_labels', '—'))} labels):</p>"
        )
        out.append(_table(["strategy", f"final {sim.metric}", "labels needed", "of random's"], rows, (1, 2, 3)))
    out.append("</section>")
    return out
