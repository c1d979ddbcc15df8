"""Peak training memory per node: counted from the real modules, checked before a run, used by ``flexpl plan``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml

from flexpl.cli import main
from flexpl.models import build_model, state_bytes
from flexpl.planner import Candidate, Planner, saved_activation_bytes
from flexpl.planner.memory import check_fits, node_peaks
from flexpl.sim.engine import stage_module
from tests.conftest import digits_star, saved_storages

BN_MODEL = "model={name: resnet18, width: 0.125, depth: 0.5}"
IMAGES = "data.transform={resize: 16, channels: 3}"


def _measured_saved_bytes(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward on real tensors, parameters excluded."""
    with saved_storages(module) as saved:
        out = module(x)
    F.cross_entropy(out, torch.zeros(len(x), dtype=torch.long)).backward() if out.ndim == 2 else out.sum().backward()
    return sum(saved.values())


@pytest.mark.parametrize(("name", "shape", "cut"), [
    ("resnet18", (3, 16, 16), (1, 3)), ("mobilenet_v2", (3, 64, 64), (0, 4)), ("vit-tiny", (3, 16, 16), (1, 3)),
    ("vgg11", (3, 32, 32), (0, 9)),
])
def test_one_stage_saved_activations_equal_a_real_measurement(name, shape, cut):
    opts = {"resnet18": {"width": 0.125}, "mobilenet_v2": {"width": 0.25}, "vit-tiny": {"dim": 24, "heads": 2},
            "vgg11": {"width": 0.0625, "hidden": 32}}[name]
    model = build_model({"name": name, **opts}, shape, 10, seed=0)
    stage = stage_module(model, *cut)
    x_shape = (5, *shape) if cut[0] == 0 else tuple(stage_module(model, 0, cut[0])(torch.zeros(5, *shape)).shape)
    predicted = saved_activation_bytes(stage, x_shape, cut[0] > 0)[2]
    x = torch.randn(x_shape, requires_grad=cut[0] > 0)
    assert predicted == _measured_saved_bytes(stage, x) > 0


def test_fl_device_peak_is_weights_grads_momentum_and_saved_activations():
    scn = digits_star([BN_MODEL, IMAGES, "training.optimizer.momentum=0.9"])
    model = build_model(scn.model, (3, 16, 16), 10, seed=0)
    param_bytes = sum(p.numel() * 4 for p in model.parameters())
    saved = _measured_saved_bytes(model, torch.randn(32, 3, 16, 16))
    peaks = node_peaks(scn)
    assert peaks["dev0"] == state_bytes(model) + 2 * param_bytes + saved
    assert peaks["server"] == state_bytes(model)  # the aggregator's averaged copy


@pytest.mark.slow
def test_adam_keeps_two_states_per_parameter():
    sgd = node_peaks(digits_star([BN_MODEL, IMAGES, "training.optimizer.momentum=0.9"]))["dev0"]
    adam = node_peaks(digits_star([BN_MODEL, IMAGES, "training.optimizer.name=adam"]))["dev0"]
    model = build_model(digits_star([BN_MODEL, IMAGES]).model, (3, 16, 16), 10, seed=0)
    assert adam - sgd == sum(p.numel() * 4 for p in model.parameters())


@pytest.mark.slow
def test_a_run_that_does_not_fit_stops_before_training_naming_the_node(tmp_path, capsys):
    data = digits_star([BN_MODEL, IMAGES, "training.rounds=1", "nodes.2.memory_bytes=1e6"]).model_dump(mode="json")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    need = node_peaks(digits_star([BN_MODEL, IMAGES]))["dev1"]
    assert len(err.splitlines()) == 1 and "node 'dev1'" in err and f"{need:.3e}" in err and "1.000e+06" in err
    assert not (out / "summary.json").exists() and not (out / "rounds.csv").exists()
    check_fits(digits_star([BN_MODEL, IMAGES]))  # with the profiles' memory it fits


def test_plan_marks_plans_that_do_not_fit_infeasible():
    # dev0 can hold the 16x16 resnet's stem but not the whole model with its optimizer state
    scn = digits_star([BN_MODEL, IMAGES, "training.rounds=1", "nodes.1.memory_bytes=1.5e6"])
    planner = Planner(scn)
    fl = planner.predict(Candidate("fl", "fl", None, "fl")).row
    fpl = planner.predict(Candidate("fpl", "fpl", {"cut": 1}, "fpl")).row
    assert fl["device_memory_fits"] is False and fl["peak_memory_device_max"] > 1.5e6
    assert fpl["device_memory_fits"] is True
