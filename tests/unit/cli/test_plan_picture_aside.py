"""``flexpl plan`` draws best_plan.png in a forked process beside plans.csv and pareto.png (flexpl.cli.plan)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexpl.cli import main
from flexpl.errors import UserError


def _plan(out: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    capsys.readouterr()
    assert main(["plan", "digits-star", "--out", str(out), "--quiet"]) == 0
    assert (out / "plans.csv").exists() and (out / "pareto.png").exists() and (out / "best.yaml").exists()
    return [ln for ln in capsys.readouterr().err.splitlines() if "best_plan" in ln]


def test_the_picture_drawn_aside_is_the_one_drawn_here(tmp_path, capsys):
    from flexpl.api import load_scenario
    from flexpl.cli.plan import _draw_best
    from flexpl.planner.recommend import cost_candidates

    assert _plan(tmp_path / "a", capsys) == []
    scn = load_scenario("digits-star")
    planner, cands, _ = cost_candidates(scn)
    best = Path(tmp_path / "a" / "best.yaml").read_text()
    label = best.splitlines()[0].rsplit(": ", 1)[1]  # "# ...: plan recommended by ...: LABEL"
    cand = next(c for c in cands if c.label == label)
    (tmp_path / "b").mkdir()
    here = _draw_best(scn, planner, cand, tmp_path / "b")
    assert here is not None and here.read_bytes() == (tmp_path / "a" / "best_plan.png").read_bytes()


@pytest.mark.parametrize("error", [UserError("no topology to draw"), RuntimeError("boom")])
def test_a_picture_that_cannot_be_drawn_is_one_warning_and_the_plan_goes_on(tmp_path, capsys, monkeypatch, error):
    import flexpl.report.plan_picture as pp

    def fail(*a, **k):
        raise error
    monkeypatch.setattr(pp, "draw", fail)
    lines = _plan(tmp_path / "o", capsys)
    assert not (tmp_path / "o" / "best_plan.png").exists()
    assert len(lines) == 1 and lines[0].startswith("flexpl: warning: no best_plan.png") and str(error) in lines[0]
