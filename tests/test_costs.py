"""Issue 16, defects 1-5: the bill tells the truth (duplex links, every FLOP, evaluation, energy, rounds.csv)."""

from __future__ import annotations

from flexpl.costs.trace import Recorder, schedule
from flexpl.engine.simulator import build_topology

from .conftest import chain_scenario


def _cross(duplex: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """dev0 uploads to the cloud while the cloud sends to dev1: their edge-cloud hops' (start, end)."""
    links = [{"between": [f"dev{i}", "edge"], "profile": "wifi"} for i in range(2)]
    scn = chain_scenario(links=[*links, {"between": ["edge", "cloud"], "profile": "fiber", "duplex": duplex}])
    topo = build_topology(scn)
    rec = Recorder(topo)
    rec.transfer("dev0", "cloud", 10_000_000, [], "weights")
    rec.transfer("cloud", "dev1", 300_000_000, [], "weights")  # still on edge-cloud when the upload gets there
    t = rec.take()
    start, end = schedule(t, 0.0)
    up, down = [(start[i], end[i]) for i in range(len(t)) if topo.link_of[t.resource[i]] == "edge-cloud"]
    return up, down


def test_full_duplex_link_carries_an_upload_and_a_download_at_once():
    (s_up, e_up), (s_down, e_down) = _cross("full")
    assert s_down < e_up and s_up < e_down  # the two intervals overlap
    assert s_down == 0.0  # the download starts at once: nothing on its direction


def test_half_duplex_link_queues_an_upload_and_a_download():
    (s_up, e_up), (s_down, e_down) = _cross("half")
    assert s_up >= e_down or s_down >= e_up  # one waits for the other


def test_builtin_link_profiles_say_their_duplex():
    from flexpl.costs.profiles import load_profiles

    _, links = load_profiles()
    assert links["wifi"].duplex == "half" and links["ble"].duplex == "half"
    for name in ("ethernet", "fiber", "lte", "5g"):
        assert links[name].duplex == "full", name
