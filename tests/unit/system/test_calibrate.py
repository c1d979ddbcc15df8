"""``flexpl calibrate`` (flexpl.costs.calibrate): FLOP/s is counted FLOPs over median pass times, and the
profile it writes loads and runs in a scenario."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from flexpl.cli import main as cli
from flexpl.models import build_model
from flexpl.sim.simulator import run
from tests.conftest import digits_star


def test_calibrate_flops_per_s_is_counted_flops_over_median_times(tmp_path: Path, monkeypatch):
    """On a scripted clock: FLOP/s = FLOPs of the three models / the sum of their median pass times."""
    import types

    from flexpl.costs import calibrate
    from flexpl.costs.flops import count_fwd_bwd
    from flexpl.system.profiles import device_profile

    # per model: 2 warm-up passes, then 3 timed ones whose median (not mean, not min) is 2 ms
    passes = [0.5, 0.5, 0.001, 0.009, 0.002] * 3
    ticks = iter([t for dt in passes for t in (0.0, dt)])  # each pass reads the clock at start and end
    monkeypatch.setattr(calibrate, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks),
                                                                 sleep=lambda s: None))
    monkeypatch.setattr(calibrate, "_rapl_files", lambda: [])
    out = tmp_path / "me.yaml"
    assert cli(["calibrate", "--out", str(out), "--repeats", "3", "--batch-size", "4", "--threads", "1",
                "--quiet"]) == 0
    flops = 0
    for name in calibrate.MODELS:
        fwd, bwd = count_fwd_bwd(build_model(name, calibrate.INPUT_SHAPE, 10, seed=0), (4, *calibrate.INPUT_SHAPE),
                                 input_grad=False)
        flops += fwd + bwd
    assert device_profile(str(out)).flops_per_s == pytest.approx(flops / (3 * 0.002), rel=1e-6)


def test_calibrate_writes_a_loadable_profile(tmp_path: Path, capsys):
    from flexpl.system.profiles import device_profile

    out = tmp_path / "me.yaml"
    assert cli(["calibrate", "--profile-name", "me", "--out", str(out), "--repeats", "1", "--threads", "1",
                "--quiet"]) == 0
    prof = device_profile(str(out))
    assert prof.memory_bytes > 0 and prof.active_power_w > 0
    text = out.read_text()
    assert text.startswith("# me: device profile measured by `flexpl calibrate`")
    assert "measured:" in text and "count_fwd_bwd" in text
    # a scenario can use it as a node profile
    nodes = [dict(n) for n in digits_star().model_dump()["nodes"]]
    nodes[1]["profile"] = str(out)
    s = run(digits_star(["training.rounds=1", "training.max_steps_per_round=1"], nodes=nodes)).summary
    assert math.isfinite(s["sim_time_s"])
    assert cli(["calibrate", "--out", str(tmp_path / "x.txt")]) == 2
    capsys.readouterr()
