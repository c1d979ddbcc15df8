"""pareto.png's cost-to-target fronts: the data the panels draw (not pixels)."""

from __future__ import annotations

from pathlib import Path

from flexpl.planner.choose import MEMORY_FITS, choose, parse_constraint
from flexpl.planner.curves import CUMULATIVE, CumulativeBill
from flexpl.planner.figures import plot_pareto, target_fronts
from flexpl.planner.recommend import add_targets
from tests.unit.planner.test_targets import _rows, _saturating


def _targeted(targets: tuple[float, ...] = (0.8,)) -> list[dict]:
    rows = _rows()
    cheap = {**rows[0], "plan": "slow-cheap", "device_energy_j_per_round": 0.1}  # class C1: learns as "slow"
    never = {**rows[1], "plan": "never", "learning_class": "C4"}
    cheap[CUMULATIVE] = CumulativeBill.uniform(cheap, 40)
    rows += [cheap, never]
    acc = {"C1": _saturating(8, c=0.1), "C2": _saturating(8, c=0.8), "C3": _saturating(8, c=0.8),
           "C4": [0.3] * 8}
    add_targets(rows, acc, list(targets), 40)
    choose(rows, [parse_constraint("raw_data_moved==false")], "device_energy_to_target")
    return rows


def test_the_cost_to_target_front_is_the_nondominated_reaching_plans():
    rows = _targeted()
    by_round, by_bytes = target_fronts(rows, "device_energy_to_target")
    assert (by_round.x, by_round.y) == ("device_energy_j_to_target", "round_to_target")
    assert by_bytes.y == "bytes_to_target"
    # drawn: the feasible plans that reach 0.8 (not "raw": it moves raw data; not "never")
    assert {p.plan for p in by_round.points} == {"slow", "slow-cheap", "fast"}
    # slow-cheap: ~20 rounds at 0.1 J; fast: ~3 rounds at 2 J; slow (the same rounds at 1 J) is dominated
    assert [p.plan for p in by_round.front] == ["slow-cheap", "fast"]
    cheap = by_round.front[0]
    row = next(r for r in rows if r["plan"] == "slow-cheap")
    assert cheap.y == row["round_to_target"] > 10 and cheap.x == row["device_energy_j_to_target"]
    assert abs(cheap.x - 0.1 * cheap.y) < 1e-12
    assert cheap.x_lo <= cheap.x <= cheap.x_hi and cheap.y_lo <= cheap.y <= cheap.y_hi
    assert (by_round.unreached_classes, by_round.classes) == (1, 4)  # C4, counted, not drawn


def test_a_per_round_objective_draws_its_to_target_form_and_bytes_draws_device_energy():
    rows = _targeted()
    assert target_fronts(rows, "device_energy")[0].x == "device_energy_j_to_target"
    assert target_fronts(rows, "bytes")[1].y == "device_energy_j_to_target"
    assert target_fronts(_rows(), "energy") == []  # no targets: no fronts


def test_pareto_png_is_written_with_the_target_fronts(tmp_path: Path):
    rows = _targeted()
    rows[0]["pareto"] = rows[0]["recommended"] = True  # as choose marks a plan (only feasible ones are drawn)
    plot_pareto(rows, "device_energy_to_target", tmp_path / "pareto.png", 0.8)
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_target_gets_its_own_row_of_fronts(tmp_path: Path, monkeypatch):
    rows = _targeted((0.8, 0.6))
    raw_ok = parse_constraint("raw_data_moved==false")
    allowed = lambda r: all(c.holds(r) for c in (MEMORY_FITS, raw_ok))  # noqa: E731
    # the second target's panels read its own columns and draw the plans that meet the constraints
    by_round = target_fronts(rows, "device_energy_to_target", "_0.6", allowed)[0]
    assert {p.plan for p in by_round.points} == {"slow", "slow-cheap", "fast"}
    for p in by_round.points:
        row = next(r for r in rows if r["plan"] == p.plan)
        assert p.y == row["round_to_target_0.6"] and p.x == row["device_energy_j_to_target_0.6"]
    assert by_round.points[0].y < next(r for r in rows if r["plan"] == by_round.points[0].plan)["round_to_target"]
    drawn: list[tuple[str, str]] = []
    import flexpl.planner.figures as figures

    real = figures._draw_front
    monkeypatch.setattr(figures, "_draw_front", lambda ax, f, t: (drawn.append((f.y, t)), real(ax, f, t)))
    rows[0]["pareto"] = rows[0]["recommended"] = True
    plot_pareto(rows, "device_energy_to_target", tmp_path / "pareto.png", [0.8, 0.6], allowed)
    assert drawn == [("round_to_target", 0.8), ("bytes_to_target", 0.8), ("round_to_target", 0.6),
                     ("bytes_to_target", 0.6)]
