"""`report.html`: one self-contained page rendered from `report.json`.

The page works offline and headless: styles are inline, there is no script, no font or stylesheet
is fetched, and every picture is embedded as a base64 `data:` URI. Sample ids come from untrusted
datasets, so every piece of text is HTML-escaped, and image paths are only read when they name a
PNG inside the run folder. A missing or unusable picture is drawn as a labelled placeholder; it
never stops the page from rendering.

Sections: the verdict with the key numbers and warnings, a gallery of the top suspects (sample with
its trigger box, activation-map overlay, extracted trigger), the trigger bank, the score histogram
with the threshold (inline SVG, log counts), stage timings and the samples that could not be read.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path
from typing import Iterable

from ssl_guard.errors import ReportError
from ssl_guard.report.schema import REPORT_FILE, Histogram, Report, Suspect, write_text_atomic

HTML_FILE = "report.html"

# Pictures larger than this are not embedded: a report thumbnail is a few kB, anything this big is
# not one of ours and would make the page unusable.
_MAX_IMAGE_BYTES = 16 * 1024 * 1024
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Beyond this many rows the skipped list points to report.json instead of growing the page.
_MAX_SKIPPED_ROWS = 2000


def render_html(run_dir: str | os.PathLike, report: Report | None = None) -> Path:
    """Render `run_dir/report.html` from `report` (or from `run_dir/report.json` when None).

    The file is written atomically and replaced on every call: it is derived from report.json and
    holds nothing else. Returns its path. Raises `ReportError` when the run folder (or, with no
    `report` given, its report.json) is missing or unreadable.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run folder {run_dir} does not exist", "pass the folder a scan wrote with --out")
    if report is None:
        report = Report.load(run_dir / REPORT_FILE)
    page = _Page(run_dir, report).render()
    return write_text_atomic(run_dir / HTML_FILE, page)


class _Page:
    """Builds the HTML text of one report; `images` resolves picture paths against the run folder."""

    def __init__(self, run_dir: Path, report: Report) -> None:
        self.run_dir = run_dir
        self.root = run_dir.resolve()
        self.report = report

    # -- page ------------------------------------------------------------------------------------

    def render(self) -> str:
        r = self.report
        title = f"ssl-guard: {r.verdict} in {r.data_root}"
        body = "\n".join(
            [
                self.header(),
                '<main>',
                self.numbers(),
                self.warnings(),
                self.nav(),
                self.suspects(),
                self.flagged_table(),
                self.bank(),
                self.scores(),
                self.stages(),
                self.skipped(),
                self.details(),
                "</main>",
                self.footer(),
            ]
        )
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            # Nothing may be fetched: the report must open offline and cannot be made to phone home.
            # The one script (sorting and filtering the flagged table) is allowed by its hash only.
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src '{_script_hash()}'\">\n"
            f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n<script>{_TABLE_JS}</script>\n</body>\n</html>\n"
        )

    def header(self) -> str:
        r = self.report
        verdict_class = {"clean": "clean", "poison found": "poison", "inconclusive": "inconclusive"}[r.verdict]
        blurb = {
            "clean": "No sample was flagged as poisoned.",
            "poison found": f"{_int(r.n_flagged)} sample{'s' if r.n_flagged != 1 else ''} flagged as poisoned and listed for quarantine.",
            "inconclusive": "The scan could not decide; read the warnings below before trusting this data.",
        }[r.verdict]
        return (
            f'<header class="top {verdict_class}">\n<div class="wrap">\n'
            '<div class="brand">ssl-guard scan report</div>\n'
            f'<div class="verdict" id="verdict">{_e(r.verdict)}</div>\n'
            f'<div class="blurb">{_e(blurb)}</div>\n'
            f'<div class="where"><span title="data root">{_e(r.data_root)}</span>'
            f' <span class="sep">·</span> <span title="created">{_e(r.created)}</span>'
            f' <span class="sep">·</span> <span title="run folder">{_e(r.run_dir)}</span></div>\n'
            "</div>\n</header>"
        )

    def numbers(self) -> str:
        r = self.report
        share = f"{100.0 * r.n_flagged / r.n_samples:.2f}% of samples" if r.n_samples else "no samples"
        skipped_share = f"{100.0 * r.n_skipped / (r.n_samples + r.n_skipped):.2f}% unreadable" if r.n_samples + r.n_skipped else ""
        cards = [
            ("Samples", _int(r.n_samples), f"in {_int(r.n_units)} unit{'s' if r.n_units != 1 else ''}", ""),
            ("Flagged", _int(r.n_flagged), share, "bad" if r.n_flagged else ("good" if r.verdict == "clean" else "")),
            ("Skipped", _int(r.n_skipped), skipped_share, "warn" if r.n_skipped else ""),
            ("Threshold", format_number(r.threshold) if r.threshold is not None else "none", "poison score cut-off", ""),
            ("Trigger bank", _int(len(r.bank)), "verified patterns", "bad" if r.bank else ""),
            ("Resolution", f"{r.resolution} px", "scan input size", ""),
        ]
        stat = "\n".join(
            f'<div class="stat {cls}"><div class="label">{_e(label)}</div>'
            f'<div class="value">{_e(value)}</div><div class="note">{_e(note)}</div></div>'
            for label, value, note, cls in cards
        )
        encoder = r.encoder + (f"@{r.encoder_revision}" if r.encoder_revision else "")
        meta = [
            ("method", r.method),
            ("detectors", ", ".join(r.detectors) or "none"),
            ("encoder", encoder),
            ("config hash", r.config_hash),
            ("ssl-guard", r.tool_version),
        ]
        dl = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in meta)
        return f'<section class="numbers">\n<div class="stats">\n{stat}\n</div>\n<dl class="meta">{dl}</dl>\n</section>'

    def warnings(self) -> str:
        if not self.report.warnings:
            return ""
        items = "\n".join(f"<li>{_e(w)}</li>" for w in self.report.warnings)
        return f'<section class="warnings" id="warnings">\n<h2>Warnings</h2>\n<ul>\n{items}\n</ul>\n</section>'

    def nav(self) -> str:
        r = self.report
        links = [
            ("suspects", "Top suspects", len(r.suspects)),
            ("flagged", "All flagged", len(r.flagged)),
            ("bank", "Trigger bank", len(r.bank)),
            ("scores", "Scores", None),
            ("stages", "Timings", None),
            ("skipped", "Unreadable", r.n_skipped),
        ]
        parts = "".join(
            f'<a href="#{anchor}">{_e(text)}' + (f' <span class="count">{_int(n)}</span>' if n is not None else "") + "</a>"
            for anchor, text, n in links
        )
        return f'<nav class="sections">{parts}</nav>'

    # -- gallery ---------------------------------------------------------------------------------

    def suspects(self) -> str:
        r = self.report
        head = (
            '<h2>Top suspects <span class="count">' + _e(f"{len(r.suspects)} shown of {r.n_flagged} flagged") + "</span></h2>\n"
            '<p class="lead">Highest poison scores first. Each card shows the sample at scan resolution with '
            "its localized trigger box, the activation map over it (brighter = stronger evidence there: for "
            "<code>mine</code>, a closer match to a trigger-bank pattern; for <code>poisoncam</code>, a larger "
            "drop of the cluster activation when masked) and the region cut out as the trigger.</p>"
        )
        if not r.suspects:
            return f'<section id="suspects">\n{head}\n<p class="empty">No suspects: no sample scored high enough to show.</p>\n</section>'
        cards = "\n".join(self.suspect_card(rank, s) for rank, s in enumerate(r.suspects, 1))
        return f'<section id="suspects">\n{head}\n<div class="gallery">\n{cards}\n</div>\n</section>'

    def flagged_table(self) -> str:
        """Every flagged sample in one table: sortable by any column (click its header), filterable."""
        r = self.report
        waived = sum(f.waived for f in r.flagged)
        head = (
            f'<h2>All flagged samples <span class="count">{_e(f"{len(r.flagged)} of {r.n_samples} samples")}</span></h2>\n'
            '<p class="lead">Every sample a detector flagged, highest score first'
            + (f"; {waived} kept in the data by the reviewed baseline (waived)" if waived else "")
            + ". Boxes are <code>x0, y0, x1, y1</code> (exclusive end) at the scan's resolution and in the photo's own pixels. "
            "Click a column header to sort; type to filter.</p>"
        )
        if not r.flagged:
            return f'<section id="flagged">\n{head}\n<p class="empty">No sample was flagged.</p>\n</section>'

        def box(b):
            return "" if b is None else ", ".join(str(v) for v in b)

        rows = "\n".join(
            f'<tr><td>{i}</td><td>{_e(f.source)}</td><td>{_e(f.key)}</td><td data-v="{f.score:.6f}">{f.score:.3f}</td>'
            f"<td>{_e(f.detector)}</td><td>{_e(box(f.box))}</td><td>{_e(box(f.box_photo))}</td>"
            f'<td>{_e("" if f.photo_size is None else f"{f.photo_size[0]}x{f.photo_size[1]}")}</td><td>{"yes" if f.waived else ""}</td></tr>'
            for i, f in enumerate(r.flagged, 1)
        )
        columns = ["#", "source", "key", "score", "detector", "box (scan px)", "box (photo px)", "photo size", "waived"]
        header = "".join(f'<th data-col="{c}" class="sortable">{_e(name)}</th>' for c, name in enumerate(columns))
        return (
            f'<section id="flagged">\n{head}\n'
            f'<p><input id="flagged-filter" type="search" placeholder="filter by source, key or detector" aria-label="filter flagged samples"> '
            f'<span id="flagged-shown">{len(r.flagged)} of {len(r.flagged)} rows</span></p>\n'
            f'<table id="flagged-table" class="flagged"><thead><tr>{header}</tr></thead>\n<tbody>\n{rows}\n</tbody></table>\n</section>'
        )

    def suspect_card(self, rank: int, s: Suspect) -> str:
        box_div = ""
        if s.box is not None:
            box_div = self.box_div(s.box)
        thumbs = (
            self.figure(s.image, "sample" + (" + box" if s.box is not None else ""), overlay=box_div)
            + self.figure(s.overlay, "activation map")
            + self.figure(s.trigger, "extracted trigger", kind="trigger")
        )
        badge = '<span class="badge flagged">flagged</span>' if s.flagged else '<span class="badge below">below threshold</span>'
        box = "[" + ", ".join(str(v) for v in s.box) + "]" if s.box is not None else "none"
        full_id = f"{s.source} / {s.key}"
        return (
            f'<article class="card suspect{" is-flagged" if s.flagged else ""}" id="suspect-{rank}">\n'
            f'<div class="thumbs">{thumbs}</div>\n'
            f'<div class="info"><div class="row"><span class="rank">#{rank}</span>{badge}</div>\n'
            f'<div class="key" title="{_e(full_id)}">{_e(s.key)}</div>\n'
            f'<div class="source" title="{_e(full_id)}">{_e(s.source)}</div>\n'
            '<dl class="facts">'
            f"<div><dt>score</dt><dd>{s.score:.3f}</dd></div>"
            f"<div><dt>detector</dt><dd>{_e(s.detector)}</dd></div>"
            f"<div><dt>box</dt><dd>{_e(box)}</dd></div>"
            "</dl></div>\n</article>"
        )

    def box_div(self, box: list[int]) -> str:
        """An absolutely placed outline over a thumbnail, in percent of the scan resolution, so it
        lands right whatever the PNG's upscale factor."""
        side = float(max(self.report.resolution, 1))
        x0, y0, x1, y1 = box
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))

        def pct(v: float) -> float:
            return min(max(100.0 * v / side, 0.0), 100.0)

        left, top = pct(x0), pct(y0)
        width, height = pct(x1) - left, pct(y1) - top
        if width <= 0 or height <= 0:
            return ""
        return f'<div class="box" style="left:{left:.2f}%;top:{top:.2f}%;width:{width:.2f}%;height:{height:.2f}%"></div>'

    def figure(self, rel: str | None, caption: str, overlay: str = "", kind: str = "") -> str:
        return (
            f'<figure class="{kind}"><div class="frame">{self.img(rel, caption)}{overlay}</div>'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )

    def img(self, rel: str | None, alt: str) -> str:
        if rel is None:
            return f'<div class="placeholder" title="{_e(alt)}">none</div>'
        uri, problem = self.data_uri(rel)
        if uri is None:
            return f'<div class="placeholder" title="{_e(rel)}">{_e(problem)}<br><code>{_e(rel)}</code></div>'
        return f'<img src="{uri}" alt="{_e(alt)}" title="{_e(rel)}">'

    def data_uri(self, rel: str) -> tuple[str | None, str]:
        """`data:image/png;base64,...` of the PNG at `rel` (relative to the run folder), or None and
        why not. Only files inside the run folder are read: a report.json from elsewhere must not
        be able to copy arbitrary files into a page that will be shared."""
        if not rel or Path(rel).is_absolute():
            return None, "not a relative path"
        path = (self.run_dir / rel).resolve()
        if path != self.root and self.root not in path.parents:
            return None, "outside the run folder"
        try:
            if path.stat().st_size > _MAX_IMAGE_BYTES:
                return None, "too large to embed"
            data = path.read_bytes()
        except FileNotFoundError:
            return None, "image missing"
        except OSError as error:
            return None, f"unreadable ({error.strerror or 'error'})"
        if not data.startswith(_PNG_SIGNATURE):
            return None, "not a PNG"
        return "data:image/png;base64," + base64.b64encode(data).decode("ascii"), ""

    # -- bank ------------------------------------------------------------------------------------

    def bank(self) -> str:
        r = self.report
        head = (
            '<h2>Trigger bank <span class="count">' + _int(len(r.bank)) + "</span></h2>\n"
            '<p class="lead">Patterns verified as triggers: the same patch recurring across many unrelated '
            "images, or (detector <em>additive</em>) one signal added to the whole of many images, shown as three "
            "panels: the estimated signal amplified around grey, its spectrum, and the hosts' scores (red) against "
            "the mirrored null (grey) with the threshold in blue. <em>Hosts</em> is how many samples carry it; a "
            "<em>targeted</em> pattern's hosts pile up in one semantic cluster.</p>"
        )
        if not r.bank:
            return f'<section id="bank">\n{head}\n<p class="empty">The bank is empty: no pattern was verified as a trigger.</p>\n</section>'
        cards = []
        for p in r.bank:
            targeted = {True: ("targeted", "flagged"), False: ("untargeted", "below"), None: ("not tested", "neutral")}[p.targeted]
            evidence = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(format_number(v))}</dd></div>" for k, v in p.evidence.items())
            box = "[" + ", ".join(str(v) for v in p.box) + "]"
            cards.append(
                f'<article class="card pattern" id="pattern-{p.id}">\n'
                f'<div class="frame">{self.img(p.image, f"trigger pattern {p.id}")}</div>\n'
                f'<div class="info"><div class="row"><span class="rank">pattern {p.id}</span>'
                f'<span class="badge {targeted[1]}">{targeted[0]}</span></div>\n'
                '<dl class="facts">'
                f"<div><dt>hosts</dt><dd>{_int(p.hosts)}</dd></div>"
                f"<div><dt>score</dt><dd>{_e(format_number(p.score))}</dd></div>"
                f"<div><dt>box</dt><dd>{_e(box)}</dd></div>"
                f"{evidence}</dl></div>\n</article>"
            )
        return f'<section id="bank">\n{head}\n<div class="bank">\n' + "\n".join(cards) + "\n</div>\n</section>"

    # -- histogram -------------------------------------------------------------------------------

    def scores(self) -> str:
        h = self.report.histogram
        total = sum(h.counts)
        note = f"{_int(total)} scored samples"
        if h.threshold is not None and math.isfinite(h.threshold):
            note += f"; threshold {format_number(h.threshold)} (bins at or above it in red)"
        else:
            note += "; no threshold"
        if h.log_scale:
            note += "; counts on a log scale"
        return (
            '<section id="scores">\n<h2>Poison scores</h2>\n'
            f'<p class="lead">{_e(note)}.</p>\n<div class="chart">{histogram_svg(h)}</div>\n</section>'
        )

    # -- tables ----------------------------------------------------------------------------------

    def stages(self) -> str:
        r = self.report
        if not r.stages:
            return '<section id="stages">\n<h2>Stage timings</h2>\n<p class="empty">No timings recorded.</p>\n</section>'
        rows = [
            (s.name, format_seconds(s.seconds), _int(s.items), "n/a" if s.rate is None else f"{format_number(s.rate)}/s")
            for s in r.stages
        ]
        total = sum(s.seconds for s in r.stages)
        rows.append(("total", format_seconds(total), "", ""))
        return (
            '<section id="stages">\n<h2>Stage timings</h2>\n'
            + _table(["stage", "time", "items", "rate"], rows, numeric={1, 2, 3}, last_is_total=True)
            + "\n</section>"
        )

    def skipped(self) -> str:
        r = self.report
        head = f'<h2>Unreadable samples <span class="count">{_int(r.n_skipped)}</span></h2>'
        if not r.skipped and not r.n_skipped:
            return f'<section id="skipped">\n{head}\n<p class="empty">Every sample was read.</p>\n</section>'
        shown = r.skipped[:_MAX_SKIPPED_ROWS]
        notes = []
        if len(r.skipped) > len(shown):
            notes.append(f"Showing the first {_int(len(shown))} of {_int(len(r.skipped))}; report.json lists them all.")
        if r.n_skipped > len(r.skipped):
            notes.append(f"{_int(r.n_skipped - len(r.skipped))} more were counted but not listed in report.json.")
        note = "".join(f'<p class="lead">{_e(n)}</p>' for n in notes)
        table = _table(["source", "key", "reason"], [(s.source, s.key, s.reason) for s in shown], mono={0, 1})
        return (
            f'<section id="skipped">\n{head}\n<p class="lead">These samples could not be decoded; they were not '
            f"scanned and are not in the quarantine. Check them by hand.</p>\n{note}{table}\n</section>"
        )

    def details(self) -> str:
        if not self.report.extra:
            return ""
        rows = [(k, v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in self.report.extra.items()]
        return '<section id="details">\n<h2>Details</h2>\n' + _table(["field", "value"], rows, mono={1}) + "\n</section>"

    def footer(self) -> str:
        from ssl_guard import __version__

        r = self.report
        return (
            f'<footer><div class="wrap">Scanned by ssl-guard {_e(r.tool_version)} · rendered by ssl-guard '
            f"{_e(__version__)} from report.json (schema {r.schema_version}) · config {_e(r.config_hash)}</div></footer>"
        )


def histogram_svg(h: Histogram, width: int = 960, height: int = 280) -> str:
    """Inline SVG bar chart of `h`: counts per bin (log10(1 + count) heights when `h.log_scale`),
    bins at or above the threshold in red, and a dashed vertical line at the threshold."""
    left, right, top, bottom = 56, 16, 22, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    lo, hi = h.edges[0], h.edges[-1]
    span = (hi - lo) or 1.0
    peak = max(h.counts, default=0)

    def x_of(v: float) -> float:
        return left + plot_w * (v - lo) / span

    def y_of(count: float) -> float:
        if peak <= 0:
            return top + plot_h
        frac = math.log10(1 + count) / math.log10(1 + peak) if h.log_scale else count / peak
        return top + plot_h * (1.0 - frac)

    threshold = h.threshold if h.threshold is not None and math.isfinite(h.threshold) else None
    parts = [
        f'<svg class="histogram" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="histogram of poison scores" xmlns="http://www.w3.org/2000/svg">'
    ]
    # y grid: powers of ten on a log axis, a few even steps on a linear one
    if peak > 0:
        if h.log_scale:
            ticks = [10**k for k in range(int(math.log10(peak)) + 1)]
        else:
            ticks = [t for t in _nice_ticks(0, peak, 4) if t == int(t)]  # counts are whole numbers
        for t in ([0] if h.log_scale else []) + ticks:
            y = y_of(t)
            parts.append(f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>')
            parts.append(f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(_int(t))}</text>')
    for count, a, b in zip(h.counts, h.edges, h.edges[1:]):
        if count <= 0:
            continue
        x0, x1 = x_of(a), x_of(b)
        y = y_of(count)
        cls = "bar hot" if threshold is not None and a >= threshold else "bar"
        parts.append(
            f'<rect class="{cls}" x="{x0 + 0.5:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 1.0, 1.0):.1f}" '
            f'height="{top + plot_h - y:.1f}"><title>{_e(f"[{format_number(a)}, {format_number(b)}): {_int(count)} samples")}</title></rect>'
        )
    parts.append(f'<line class="axis" x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}"/>')
    for t in _nice_ticks(lo, hi, 6):
        x = x_of(t)
        if left - 0.5 <= x <= left + plot_w + 0.5:
            parts.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{top + plot_h}" y2="{top + plot_h + 5}"/>')
            parts.append(f'<text class="tick" x="{x:.1f}" y="{top + plot_h + 18}" text-anchor="middle">{_e(format_number(t))}</text>')
    parts.append(f'<text class="axis-label" x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">poison score</text>')
    parts.append(
        f'<text class="axis-label" transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle">'
        f'{"samples (log)" if h.log_scale else "samples"}</text>'
    )
    if threshold is not None:
        x = x_of(threshold)
        anchor = "end" if x > left + plot_w * 0.8 else "start"
        dx = -6 if anchor == "end" else 6
        parts.append(f'<line class="threshold" x1="{x:.1f}" x2="{x:.1f}" y1="{top - 8}" y2="{top + plot_h}"/>')
        parts.append(f'<text class="threshold-label" x="{x + dx:.1f}" y="{top + 4}" text-anchor="{anchor}">threshold {_e(format_number(threshold))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _nice_ticks(lo: float, hi: float, n: int) -> list[float]:
    """About `n` round-numbered ticks covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    span = hi - lo
    if not (math.isfinite(span) and span > 0):
        return [lo]
    raw = span / max(n, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _table(header: list[str], rows: Iterable[tuple], numeric: set[int] = frozenset(), mono: set[int] = frozenset(), last_is_total: bool = False) -> str:
    rows = list(rows)

    def cls(i: int) -> str:
        names = (["num"] if i in numeric else []) + (["mono"] if i in mono else [])
        return f' class="{" ".join(names)}"' if names else ""

    head = "".join(f"<th{cls(i)}>{_e(h)}</th>" for i, h in enumerate(header))
    body = []
    for n, row in enumerate(rows):
        row_cls = ' class="total"' if last_is_total and n == len(rows) - 1 else ""
        body.append(f"<tr{row_cls}>" + "".join(f"<td{cls(i)}>{_e(str(v))}</td>" for i, v in enumerate(row)) + "</tr>")
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>' + "".join(body) + "</tbody></table></div>"


def _e(text: object) -> str:
    """HTML-escape anything (quotes too, since text also lands in attributes)."""
    return html.escape(str(text), quote=True)


def _int(n: float) -> str:
    return f"{int(n):,}"


def format_number(x: float | None) -> str:
    """A float for people: 4 significant digits, no exponent for everyday magnitudes."""
    if x is None:
        return "none"
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e6:
        text = f"{x:.4g}"
        return text if "e" not in text else f"{x:.1f}"
    return f"{x:.3g}"


def format_seconds(s: float) -> str:
    """A duration for people: `41.30 s`, `2 min 24 s`, `3 h 05 min`."""
    if s < 60:
        return f"{s:.2f} s"
    minutes, seconds = divmod(s, 60)
    if minutes < 60:
        return f"{int(minutes)} min {seconds:02.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes):02d} min"


# Sorting and filtering of the flagged table; the page's CSP allows exactly this script by its hash.
_TABLE_JS = """
(function () {
  var table = document.getElementById("flagged-table");
  if (!table) return;
  var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
  var filter = document.getElementById("flagged-filter"), shown = document.getElementById("flagged-shown");
  var state = {col: -1, dir: 1};
  table.classList.add("js");  // marks a page whose script ran (the CSP hash matched)
  function value(row, col) {
    var cell = row.cells[col], v = cell.getAttribute("data-v") || cell.textContent;
    var n = parseFloat(v);
    return isNaN(n) || col === 1 || col === 2 || col === 4 ? v.toLowerCase() : n;
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
    th.addEventListener("click", function () {
      state.dir = state.col === col ? -state.dir : (col === 3 ? -1 : 1);
      state.col = col;
      rows.sort(function (a, b) { var x = value(a, col), y = value(b, col); return x < y ? -state.dir : x > y ? state.dir : 0; });
      rows.forEach(function (r) { body.appendChild(r); });
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", state.dir > 0 ? "ascending" : "descending");
    });
  });
  filter.addEventListener("input", function () {
    var q = filter.value.toLowerCase(), n = 0;
    rows.forEach(function (r) { var hit = r.textContent.toLowerCase().indexOf(q) >= 0; r.hidden = !hit; if (hit) n++; });
    shown.textContent = n + " of " + rows.length + " rows";
  });
})();
"""


def _script_hash() -> str:
    import base64
    import hashlib

    return "sha256-" + base64.b64encode(hashlib.sha256(_TABLE_JS.encode()).digest()).decode()


_CSS = """
table.flagged{border-collapse:collapse;width:100%;font-size:13px;background:var(--card)}
table.flagged th,table.flagged td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;font-family:var(--mono)}
table.flagged th.sortable{cursor:pointer;user-select:none}table.flagged th[aria-sort]{color:var(--accent)}
#flagged-filter{padding:4px 8px;min-width:20em}
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--muted:#5d6678;--line:#dfe3ea;--accent:#3557c4;
--good:#1a7f37;--bad:#c62a2f;--warn:#a86b00;--bar:#7d8db3;--hot:#d83a3f;--frame:#eef0f4;
--mono:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace}
@media (prefers-color-scheme:dark){:root{--bg:#12151b;--card:#1b2029;--ink:#e4e8ef;--muted:#9aa4b5;
--line:#2d3441;--accent:#8aa6ff;--bar:#7384ab;--frame:#242a35}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,"Segoe UI",
Roboto,"Helvetica Neue",Arial,"DejaVu Sans",sans-serif}
.wrap,main{max-width:1240px;margin:0 auto;padding:0 24px}
header.top{color:#fff;padding:22px 0 20px}
header.top.clean{background:linear-gradient(135deg,#16743a,#1f9d55)}
header.top.poison{background:linear-gradient(135deg,#9e1c22,#d2383e)}
header.top.inconclusive{background:linear-gradient(135deg,#8a5a00,#c98a12)}
.brand{font-size:12px;letter-spacing:.12em;text-transform:uppercase;opacity:.85}
.verdict{font-size:34px;font-weight:750;text-transform:capitalize;margin:2px 0}
.blurb{font-size:15px;opacity:.95}
.where{margin-top:8px;font:12px/1.4 var(--mono);opacity:.85;word-break:break-all}
.where .sep{opacity:.6}
section{margin:26px 0}
h2{font-size:19px;margin:0 0 6px;display:flex;align-items:center;gap:8px}
.count{display:inline-block;font-size:12px;font-weight:600;background:var(--frame);color:var(--muted);
border-radius:10px;padding:1px 8px}
.lead{color:var(--muted);margin:0 0 12px;max-width:880px}
.empty{color:var(--muted);font-style:italic}
.numbers{margin-top:20px}
.stats{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:12px}
.stat{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px;
border-top:4px solid var(--line)}
.stat.bad{border-top-color:var(--bad)}.stat.good{border-top-color:var(--good)}.stat.warn{border-top-color:var(--warn)}
.stat .label{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.06em}
.stat .value{font-size:26px;font-weight:700;font-variant-numeric:tabular-nums}
.stat.bad .value{color:var(--bad)}
.stat .note{font-size:12px;color:var(--muted)}
dl{margin:0}
.meta{display:flex;flex-wrap:wrap;gap:6px 22px;margin-top:12px;font-size:13px}
.meta div{display:flex;gap:6px}.meta dt{color:var(--muted)}.meta dd{margin:0;font-family:var(--mono);word-break:break-all}
.warnings{background:#fff6e0;border:1px solid #f0cf7a;border-left:5px solid var(--warn);border-radius:8px;
padding:10px 16px;color:#4a3500}
.warnings h2{color:#7a5200;font-size:16px}.warnings ul{margin:4px 0;padding-left:20px}
nav.sections{position:sticky;top:0;z-index:5;display:flex;flex-wrap:wrap;gap:4px;background:var(--bg);
padding:8px 0;border-bottom:1px solid var(--line)}
nav.sections a{color:var(--accent);text-decoration:none;padding:4px 10px;border-radius:6px;font-weight:600}
nav.sections a:hover{background:var(--frame)}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:14px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;overflow:hidden;
box-shadow:0 1px 2px rgba(20,30,50,.06)}
.card.suspect.is-flagged{border-color:#e9a2a5;box-shadow:inset 4px 0 0 var(--bad),0 1px 2px rgba(20,30,50,.06)}
.thumbs{display:grid;grid-template-columns:repeat(3,1fr);gap:8px;padding:12px 12px 4px 16px}
figure{margin:0;min-width:0}
figcaption{font-size:11px;color:var(--muted);text-align:center;margin-top:3px;white-space:nowrap;
overflow:hidden;text-overflow:ellipsis}
.frame{position:relative;aspect-ratio:1/1;background:var(--frame);border-radius:6px;overflow:hidden;
display:flex;align-items:center;justify-content:center}
.frame img{width:100%;height:100%;object-fit:contain;image-rendering:pixelated;display:block}
figure.trigger .frame{background:repeating-conic-gradient(var(--frame) 0 25%,var(--card) 0 50%) 0 0/12px 12px}
figure.trigger .frame img{width:78%;height:78%}
.box{position:absolute;border:2px solid #ff2d2d;box-shadow:0 0 0 1px rgba(255,255,255,.85);border-radius:1px;
pointer-events:none}
.placeholder{font-size:11px;color:var(--muted);text-align:center;padding:6px;word-break:break-all;line-height:1.3}
.placeholder code{font-size:10px}
.info{padding:6px 12px 12px 16px}
.row{display:flex;align-items:center;justify-content:space-between;gap:8px}
.rank{font-weight:700;color:var(--muted)}
.badge{font-size:11px;font-weight:700;text-transform:uppercase;letter-spacing:.05em;border-radius:999px;padding:2px 9px}
.badge.flagged{background:var(--bad);color:#fff}
.badge.below{background:var(--frame);color:var(--muted);border:1px solid var(--line)}
.badge.neutral{background:transparent;color:var(--muted);border:1px dashed var(--line)}
.key{font:600 13px/1.3 var(--mono);margin-top:4px;word-break:break-all}
.source{font:12px/1.3 var(--mono);color:var(--muted);word-break:break-all}
.facts{display:flex;flex-wrap:wrap;gap:2px 16px;margin-top:6px;font-size:12px}
.facts div{display:flex;gap:5px}.facts dt{color:var(--muted)}
.facts dd{margin:0;font-family:var(--mono);font-variant-numeric:tabular-nums}
.bank{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:14px}
.pattern .frame{margin:12px 12px 0 16px;background:repeating-conic-gradient(var(--frame) 0 25%,var(--card) 0 50%) 0 0/12px 12px}
.pattern .frame img{width:70%;height:70%}
.chart{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:10px 12px}
svg.histogram{display:block;font-family:inherit}
svg .bar{fill:var(--bar)}svg .bar.hot{fill:var(--hot)}svg .bar:hover{opacity:.75}
svg .grid{stroke:var(--line);stroke-width:1}
svg .axis{stroke:var(--muted);stroke-width:1}
svg .tick{fill:var(--muted);font-size:11px}
svg .axis-label{fill:var(--muted);font-size:12px}
svg .threshold{stroke:var(--ink);stroke-width:2;stroke-dasharray:6 4}
svg .threshold-label{fill:var(--ink);font-size:12px;font-weight:700}
.table-wrap{overflow-x:auto;background:var(--card);border:1px solid var(--line);border-radius:10px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:7px 12px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.05em;background:var(--frame)}
tbody tr:last-child td{border-bottom:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.mono{font-family:var(--mono);font-size:12px;word-break:break-all}
tr.total td{font-weight:700;border-top:2px solid var(--line)}
footer{color:var(--muted);font-size:12px;padding:18px 0 28px;border-top:1px solid var(--line);margin-top:30px}
"""
