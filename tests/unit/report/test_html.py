"""Tests for flexpl.report.html: every figure embedded, Pareto fronts, timelines, a headless browser."""

from __future__ import annotations

import base64
import csv
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from flexpl import cli
from flexpl.errors import UserError
from flexpl.report.html import build_report
from flexpl.report.plots import FIGURES
from flexpl.report.runs import discover_runs, pareto_front

STRATEGIES = ["centralized", "fl", "sl", "fpl"]
CHROMIUM = Path("/usr/bin/chromium")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory) -> Path:
    """A compare folder (the CLI builds its report.html at the end)."""
    import torch

    out = tmp_path_factory.mktemp("report") / "cmp"
    threads = torch.get_num_threads()
    # The tiny MLP gains nothing from intra-op threads, and on a busy 2-core box they thrash (3-4x slower).
    torch.set_num_threads(1)
    try:
        rc = cli.main(["compare", "digits-star", "--strategies", ",".join(STRATEGIES),
                       "--set", "training.rounds=2", "--out", str(out), "--quiet"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return out


def embedded_pngs(text: str) -> dict[str, bytes]:
    """alt -> decoded PNG bytes of every <img> with a data URI."""
    out = {}
    for tag in re.findall(r"<img\b[^>]*>", text):
        alt = re.search(r'\balt="([^"]+)"', tag)
        src = re.search(r'\bsrc="data:image/png;base64,([A-Za-z0-9+/=]+)"', tag)
        if alt and src:
            out[alt.group(1)] = base64.b64decode(src.group(1), validate=True)
    return out


def test_report_embeds_every_figure(compare_dir):
    text = (compare_dir / "report.html").read_text()
    pngs = embedded_pngs(text)
    for name, _ in FIGURES:
        assert name in pngs, f"figure {name} is not embedded"
        assert pngs[name].startswith(PNG_MAGIC) and len(pngs[name]) > 5000
        assert (compare_dir / f"fig_{name}.png").read_bytes() == pngs[name]
    # Self-contained: nothing to fetch, no scripts.
    for bad in ('src="http', 'href="http', "<script", "<link", "url(", "@import"):
        assert bad not in text


def test_report_has_table_and_resolved_scenario(compare_dir):
    text = (compare_dir / "report.html").read_text()
    summary = json.loads((compare_dir / "fl" / "summary.json").read_text())
    for key, value in summary.items():
        if not isinstance(value, dict):
            assert f">{key}<" in text, f"summary key {key} missing from the table"
    for s in STRATEGIES:
        assert f"{s}/config.yaml" in text
    assert "<pre>name: digits-star" in text


def test_report_on_a_single_run_folder(compare_dir, capsys):
    run = compare_dir / "fl"
    assert cli.main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    assert set(embedded_pngs((run / "report.html").read_text())) >= {n for n, _ in FIGURES}


def test_discover_runs_depth_two(compare_dir, tmp_path):
    shutil.copytree(compare_dir / "fl", tmp_path / "a" / "b")  # depth 2: found
    shutil.copytree(compare_dir / "sl", tmp_path / "x" / "y" / "z")  # depth 3: not found
    (tmp_path / "a" / "partial").mkdir()  # an unfinished run (no summary.json): ignored
    assert discover_runs(tmp_path) == [tmp_path / "a" / "b"]
    assert [p.name for p in discover_runs(compare_dir)] == STRATEGIES  # compare's order, not sorted


def test_report_without_runs_is_a_user_error(tmp_path, capsys):
    with pytest.raises(UserError, match="no finished run"):
        build_report(tmp_path)
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert "report:" in capsys.readouterr().err


def test_pareto_front_by_hand():
    points = [
        (1.0, 0.5),  # 0 front
        (2.0, 0.7),  # 1 front
        (2.0, 0.7),  # 2 front: ties do not dominate each other
        (3.0, 0.6),  # 3 dominated by 1 (costs more, less accurate)
        (1.0, 0.4),  # 4 dominated by 0 (same cost, less accurate)
        (0.5, 0.2),  # 5 front: the cheapest
        (4.0, 0.9),  # 6 front: the most accurate
        (5.0, 0.9),  # 7 dominated by 6 (same accuracy, costs more)
        (math.nan, 1.0),  # 8 unknown cost: never on the front
    ]
    assert pareto_front(points) == [0, 1, 2, 5, 6]
    assert pareto_front([]) == []
    assert pareto_front([(3.0, 0.1)]) == [0]


def test_timeline_has_no_overlap_and_ends_at_sim_time(compare_dir):
    for s in STRATEGIES:
        with open(compare_dir / s / "timeline.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        summary = json.loads((compare_dir / s / "summary.json").read_text())
        assert rows, s
        by_resource: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            start, end = float(r["start_s"]), float(r["end_s"])
            assert end >= start
            assert r["resource"] in summary["per_node" if r["resource_kind"] == "node" else "per_link"]
            by_resource.setdefault(r["resource"], []).append((start, end))
        for res, spans in by_resource.items():
            spans.sort()
            for (_, end), (start, _) in zip(spans, spans[1:]):
                assert start >= end, f"{s}: overlapping actions on {res}"
        last = max(end for spans in by_resource.values() for _, end in spans)
        assert math.isclose(last, summary["sim_time_s"], rel_tol=1e-9), s


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp)


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(compare_dir, tmp_path):
    import matplotlib.image

    url = (compare_dir / "report.html").resolve().as_uri()
    shot = tmp_path / "shot.png"
    res = _chromium([f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars", url], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 50_000
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 0.05  # not a blank page
    dom = _chromium(["--enable-logging=stderr", "--v=0", "--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for name, _ in FIGURES:
        assert f'alt="{name}"' in dom.stdout
    assert "CONSOLE" not in dom.stderr and "Uncaught" not in dom.stderr
