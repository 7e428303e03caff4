"""report.html: one offline page holding every suspect and pattern, safe against hostile sample ids,
re-rendered by `ssl-guard report RUN_DIR`, and actually showing its gallery in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from ssl_guard.cli import main
from ssl_guard.errors import ReportError
from ssl_guard.report.html import histogram_svg, render_html
from ssl_guard.report.images import save_png
from ssl_guard.report.schema import Histogram, Report


DATA_URI = "data:image/png;base64,"


def _suspect_cards(page: str) -> int:
    return len(re.findall(r'<article class="card suspect[" ]', page))


def test_page_holds_every_suspect_and_pattern(run_folder):
    report = Report.load(run_folder)
    page = render_html(run_folder).read_text()
    assert _suspect_cards(page) == len(report.suspects)
    for rank, suspect in enumerate(report.suspects, 1):
        assert f'id="suspect-{rank}"' in page
        assert _escaped(suspect.key) in page and _escaped(suspect.source) in page
    for pattern in report.bank:
        assert f'id="pattern-{pattern.id}"' in page
    assert page.count('class="badge flagged">flagged') == sum(s.flagged for s in report.suspects)
    assert "targeted</span>" in page and "not tested</span>" in page
    # every picture is embedded: three per suspect, one per pattern, nothing fetched
    assert page.count(DATA_URI) == 3 * len(report.suspects) + len(report.bank)
    assert "report_assets/suspect_000.png" not in re.sub(r'title="[^"]*"', "", page)
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    for skipped in report.skipped:
        assert _escaped(skipped.reason) in page
    assert report.verdict in page and "2,048" in page


def test_hostile_keys_are_escaped(run_folder):
    from ssl_guard.report import html

    page = render_html(run_folder).read_text()
    # the only script is the report's own table script, allowed by its hash in the CSP
    assert page.lower().count("<script") == 1 and f"<script>{html._TABLE_JS}</script>" in page
    policy = re.search(r"script-src ([^;\"]*)", page).group(1)
    assert policy.strip() == f"'{html._script_hash()}'"  # no 'unsafe-inline' for scripts
    assert page.count("&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;") >= 2  # gallery and skipped list


def test_hostile_key_in_an_attribute_cannot_break_out(run_folder):
    report = Report.load(run_folder)
    report.suspects[0].key = '" onmouseover="alert(1)'
    page = render_html(run_folder, report).read_text()
    assert 'onmouseover="alert' not in page
    assert "&quot; onmouseover=&quot;alert(1)" in page


def test_missing_picture_becomes_a_labelled_placeholder(run_folder):
    report = Report.load(run_folder)
    (run_folder / report.suspects[1].overlay).unlink()
    page = render_html(run_folder).read_text()
    assert page.count(DATA_URI) == 3 * len(report.suspects) + len(report.bank) - 1
    assert "image missing" in page and report.suspects[1].overlay in page
    assert _suspect_cards(page) == len(report.suspects)


@pytest.mark.parametrize(
    "path, problem",
    [("../secret.png", "outside the run folder"), ("/etc/hostname", "not a relative path"), ("report.json", "not a PNG")],
)
def test_only_pngs_inside_the_run_folder_are_embedded(run_folder, path, problem):
    save_png(np.full((3, 8, 8), 200, np.uint8), run_folder.parent / "secret.png")
    report = Report.load(run_folder)
    report.suspects[0].image = path
    report.bank[0].image = path
    page = render_html(run_folder, report).read_text()
    assert page.count(problem) == 2
    assert page.count(DATA_URI) == 3 * len(report.suspects) + len(report.bank) - 2


def test_rerender_replaces_only_report_html(run_folder):
    first = render_html(run_folder)
    others = {p: p.read_bytes() for p in run_folder.rglob("*") if p.is_file() and p != first}
    first.write_text("stale")
    second = render_html(run_folder)
    assert second == first and second.read_text().startswith("<!DOCTYPE html>")
    assert {p: p.read_bytes() for p in run_folder.rglob("*") if p.is_file() and p != first} == others
    assert render_html(run_folder, Report.load(run_folder)).read_text() == second.read_text()


def test_missing_run_folder_is_a_report_error(tmp_path):
    with pytest.raises(ReportError, match="does not exist"):
        render_html(tmp_path / "nowhere")


def test_histogram_draws_threshold_line_and_hot_bins():
    h = Histogram(edges=[0.0, 0.25, 0.5, 0.75, 1.0], counts=[900, 40, 0, 7], threshold=0.5)
    svg = histogram_svg(h, width=456, height=200)  # plot area x: 56 .. 440
    assert re.search(r'<line class="threshold" x1="248\.0"', svg)  # halfway along the axis
    assert svg.count('class="bar hot"') == 1  # the empty bin draws nothing
    assert svg.count('class="bar"') == 2
    assert ">threshold 0.5<" in svg
    assert "threshold" not in histogram_svg(Histogram(edges=[0.0, 1.0], counts=[3], threshold=None))
    linear = histogram_svg(Histogram(edges=[0.0, 1.0, 2.0], counts=[1, 0], threshold=None, log_scale=False))
    assert re.findall(r'<text class="tick" x="50" [^>]*>([^<]*)<', linear) == ["0", "1"]  # whole counts only


def test_cli_rerenders_and_prints_summary(run_folder, capsys):
    assert main(["report", str(run_folder)]) == 0
    out = capsys.readouterr().out
    assert f"report: {run_folder / 'report.html'}" in out
    assert "POISON FOUND" in out and "2,048" in out
    assert _suspect_cards((run_folder / "report.html").read_text()) == 9


def test_cli_fails_cleanly_on_missing_folder_or_report(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "does not exist" in err and len(err.strip().splitlines()) == 1
    assert main(["report", str(tmp_path)]) == 2
    assert "report.json does not exist" in capsys.readouterr().err


def test_cli_refuses_another_schema_version(run_folder, capsys):
    data = json.loads((run_folder / "report.json").read_text())
    data["schema_version"] = 99
    (run_folder / "report.json").write_text(json.dumps(data))
    assert main(["report", str(run_folder)]) == 2
    assert "schema_version 99" in capsys.readouterr().err
    assert not (run_folder / "report.html").exists()


# -- in a real browser -----------------------------------------------------------------------------

_PROBE = """<script>
window.addEventListener("load", function () {
  var box = document.querySelector(".gallery").getBoundingClientRect();
  var imgs = document.querySelectorAll(".gallery img"), decoded = 0;
  imgs.forEach(function (i) { if (i.complete && i.naturalWidth > 0) decoded++; });
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({x: box.left, y: box.top, w: box.width, h: box.height,
    dpr: window.devicePixelRatio, imgs: imgs.length, decoded: decoded});
  document.body.appendChild(out);
});
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")


def _run_chromium(binary: str, *args: str) -> str:
    with tempfile.TemporaryDirectory(prefix="ssl-guard-chromium-") as profile:
        done = subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1280,2000", *args],
            capture_output=True, text=True, timeout=120,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _gallery_stats(screenshot: Path, box: tuple[int, int, int, int]) -> tuple[int, float]:
    from PIL import Image

    pixels = np.asarray(Image.open(screenshot).convert("RGB").crop(box)).reshape(-1, 3)
    distinct = len(np.unique(pixels.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)))
    return distinct, float(pixels.astype(np.float64).std(axis=0).mean())


def test_gallery_renders_in_headless_chromium(run_folder, tmp_path):
    binary = _chromium()
    report = Report.load(run_folder)
    page = render_html(run_folder)

    # Geometry and decoding come from a probe copy: the page itself has no script (its CSP forbids
    # one), so the copy drops the CSP and appends a script after everything else, which cannot move
    # the gallery.
    probe = run_folder / "probe.html"
    text = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>\n', "", page.read_text())
    probe.write_text(text.replace("</body>", _PROBE + "</body>"))
    dom = _run_chromium(binary, "--dump-dom", probe.as_uri())
    assert _suspect_cards(dom) == len(report.suspects)
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom)
    assert found, "the probe script did not run"
    probed = json.loads(found.group(1).replace("&quot;", '"'))
    assert probed["imgs"] == probed["decoded"] == 3 * len(report.suspects)  # every thumbnail decoded

    scale = probed["dpr"]
    box = tuple(int(round(v * scale)) for v in (probed["x"], probed["y"], probed["x"] + probed["w"], probed["y"] + probed["h"]))
    assert box[3] <= 2000 * scale, "the gallery should fit the 1280x2000 window"
    shot = tmp_path / "report.png"
    _run_chromium(binary, f"--screenshot={shot}", page.as_uri())
    distinct, spread = _gallery_stats(shot, box)
    # pytest keeps tmp_path of recent runs: .../pytest-current/test_gallery_renders_in_hea*/report.png

    # The same gallery with every picture missing (placeholders only) is the blank baseline: the
    # real one must be far richer than it, not merely non-white.
    for png in (run_folder / "report_assets").glob("*.png"):
        png.unlink()
    empty = render_html(run_folder)
    empty_shot = tmp_path / "empty.png"
    _run_chromium(binary, f"--screenshot={empty_shot}", empty.as_uri())
    empty_distinct, empty_spread = _gallery_stats(empty_shot, box)

    assert distinct > 5000, (distinct, empty_distinct)
    assert distinct > 10 * empty_distinct, (distinct, empty_distinct)
    assert spread > 40 and spread > 1.5 * empty_spread, (spread, empty_spread)


def _escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_every_flagged_sample_is_in_the_table_with_photo_boxes(tmp_path):
    """The gallery shows the top few; the table lists every flagged sample, with boxes in the
    photo's own pixels (photos stored at 128 px, scanned at 64 px: boxes double)."""
    import json

    from PIL import Image

    from ssl_guard.cli import main
    from tests.detect.planted import planted_patch_images

    images, truth, _ = planted_patch_images(240, 30, seed=0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, pixels in enumerate(images):
        Image.fromarray(pixels.transpose(1, 2, 0)).resize((128, 128), Image.NEAREST).save(folder / f"img{i:03d}.png")
    run = tmp_path / "run"
    assert main(["scan", str(folder), "--out", str(run), "--workers", "0", "--quiet", "--resolution", "64"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["n_flagged"] == 30 and len(report["flagged"]) == 30
    scores = [f["score"] for f in report["flagged"]]
    assert scores == sorted(scores, reverse=True)
    for row in report["flagged"]:
        assert row["photo_size"] == [128, 128]
        assert row["box_photo"] == [2 * v for v in row["box"]]
    page = (run / "report.html").read_text()
    table = page[page.index('id="flagged-table"') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr><td>") == 30
    assert f"{report['flagged'][0]['score']:.3f}" in table
    assert f"{len(report['suspects'])} shown of 30 flagged" in page
