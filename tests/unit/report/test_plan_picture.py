"""The plan picture's data: nodes, tiers, blocks, averaging and per-link bytes equal the bill (not pixels)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexpl.api import load_scenario, simulate
from flexpl.report.plan_picture import (
    StageInfo,
    draw,
    kind_of,
    picture_data,
    picture_of_run,
    picture_of_scenario,
)


def test_kind_of() -> None:
    stages = [StageInfo(0, 0), StageInfo(0, 3, "server")]  # an empty front stage: its "activations" are raw inputs
    assert kind_of("activation", "s1r0", stages) == "raw data"
    assert kind_of("activation", "s1r0", [StageInfo(0, 1), StageInfo(1, 3)]) == "activations"
    assert [kind_of(w, "", stages) for w in ("data", "gradient", "labels", "weights")] == [
        "raw data", "gradients", "labels", "weights"]


@pytest.fixture(scope="module")
def fpl_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fpl")
    simulate(load_scenario("digits-star", strategy="fpl", overrides={"training.rounds": 1}), out=out)
    return out


def test_run_picture_equals_the_bill(fpl_run: Path) -> None:
    pic = picture_of_run(fpl_run)
    summary = json.loads((fpl_run / "summary.json").read_text())
    tiers = {n.name: n.tier for n in pic.nodes}
    assert tiers == {"server": "cloud", **{f"dev{i}": "device" for i in range(4)}}
    blocks = {n.name: n.blocks for n in pic.nodes}
    assert blocks["server"] == [(1, 3)] and all(blocks[f"dev{i}"] == [(0, 1)] for i in range(4))
    assert {(e.a, e.b) for e in pic.edges} == {(f"dev{i}", "server") for i in range(4)}
    for e in pic.edges:  # one round: the link's bytes in the bill
        assert e.total == summary["per_link"][e.name]["bytes"]
        assert set(e.bytes) == {"activations", "gradients", "labels"} and e.duplex in ("full", "half")
    assert sum(e.total for e in pic.edges) == summary["bytes_total"]
    assert draw(pic)[:8] == b"\x89PNG\r\n\x1a\n"


def test_planned_picture_equals_the_run(fpl_run: Path) -> None:
    scn = load_scenario("digits-star", strategy="fpl", overrides={"training.rounds": 1})
    planned, ran = picture_of_scenario(scn), picture_of_run(fpl_run)
    assert [(e.name, e.bytes) for e in planned.edges] == [(e.name, e.bytes) for e in ran.edges]
    assert [(n.name, n.blocks, n.averages) for n in planned.nodes] == [(n.name, n.blocks, n.averages) for n in ran.nodes]


def test_fedavg_and_raw_data_are_shown() -> None:
    from flexpl.api import predict

    fl = picture_of_scenario(load_scenario("digits-star", strategy="fl", overrides={"training.rounds": 1}))
    assert [n.averages for n in fl.nodes if n.name == "server"] == [[0]]
    assert all(set(e.bytes) == {"weights"} for e in fl.edges)
    scn = load_scenario("digits-star", strategy="centralized", overrides={"training.rounds": 1})
    pic = picture_of_scenario(scn)
    raw = sum(e.bytes.get("raw data", 0) for e in pic.edges)
    assert raw > 0 and raw == predict(scn)["raw_bytes_per_round"]


def test_picture_data_counts_only_the_rows_given() -> None:
    class P:  # a link profile's fields
        bandwidth_up_bps, bandwidth_down_bps, duplex = 1e6, 2e6, "half"

    class Topo:
        nodes = {"c": None, "e": None, "d": None}
        links = {"d-e": ("d", "e", P()), "e-c": ("e", "c", P())}
        server, data_nodes = "c", ["d"]

    rows = [{"resource_kind": "node", "label": "s0r0", "src": "d"},
            {"resource_kind": "link", "what": "activation", "label": "s1r0", "src": "d", "dst": "e", "bytes": 10},
            {"resource_kind": "link", "what": "weights", "label": "", "src": "c", "dst": "e", "bytes": 7}]
    pic = picture_data(Topo(), [StageInfo(0, 1), StageInfo(1, 2, "c")], rows)
    assert [n.tier for n in pic.nodes] == ["cloud", "edge", "device"]
    assert [n.averages for n in pic.nodes] == [[1], [], []]
    assert {e.name: e.bytes for e in pic.edges} == {"d-e": {"activations": 10.0}, "e-c": {"weights": 7.0}}


def test_picture_with_flexpl_plans_planner_equals_its_prediction() -> None:
    """flexpl plan draws its recommended plan with its own planner (walks already clocked): bytes as predicted."""
    from flexpl.planner.candidates import Candidate
    from flexpl.planner.predict import Planner

    scn = load_scenario("digits-star", strategy="sfl", overrides={"training.rounds": 1})
    planner = Planner(scn)
    cand = Candidate("sfl", "sfl", None, "sfl")
    pred = planner.predict(cand)  # clocks the round: its cached walk no longer holds the trace
    pic = picture_of_scenario(scn, cand.plan, cand.strategy, planner=planner)
    assert {e.name: e.total for e in pic.edges} == {k: v["bytes"] for k, v in pred.per_link.items()}
    assert {"weights", "activations", "gradients", "labels"} <= {k for e in pic.edges for k in e.bytes}
