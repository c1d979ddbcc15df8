"""Scenario expansion (flexpl.config.scenario): ``count`` expands nodes and links; a bad count is a one-line error."""

from __future__ import annotations

import pytest

from flexpl.config.scenario import load_scenario
from flexpl.errors import UserError

pytestmark = pytest.mark.equivalence  # as in sim/exec/test_executor.py, where these tests were (make test-kernels)


def test_count_expands_nodes_and_links() -> None:
    scn = load_scenario("mlp-1000")
    assert len(scn.data_nodes) == 1000 and len(scn.links) == 1000
    assert scn.data_nodes[0] == "phone0" and scn.links[999].between == ("phone999", "cloud")
    scn = load_scenario("cnn-100")
    assert len(scn.data_nodes) == 100


@pytest.mark.parametrize("item, message", [
    ("nodes.1.count=0", "nodes[1].count: must be a positive integer"),
    ("nodes.1.name=dev", "nodes[1].name: with count, put '{i}' in the name"),
    ("links.0.between=[a, server]", "links[0].between: with count, put '{i}'"),
])
def test_bad_count_is_a_one_line_error(item: str, message: str) -> None:
    with pytest.raises(UserError, match=r"^" + message.replace("[", r"\[").replace("]", r"\]")
                       .replace("{", r"\{").replace("}", r"\}")):
        load_scenario("cnn-100", [item])
