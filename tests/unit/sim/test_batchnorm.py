"""Batch norm across replicas: buffers averaged and moved like weights; a batch junction's BN sees the joined batch."""

from __future__ import annotations

import pytest
import torch

from flexpl.data.batching import batches
from flexpl.models import build_model, state_bytes
from flexpl.sim.engine import stage_module
from flexpl.sim.simulator import run, setup
from tests.conftest import digits_star

BN_MODEL = "model={name: resnet18, width: 0.0625, depth: 0.5}"
IMAGES = "data.transform={resize: 16, channels: 3}"


def test_fedavg_averages_batch_norm_buffers_and_moves_them():
    scn = digits_star([BN_MODEL, IMAGES, "training.rounds=1", "training.max_steps_per_round=2"])
    st = setup(scn)
    s = run(scn, st=st).summary
    model = build_model(scn.model, (3, 16, 16), 10, seed=0)
    bufs = dict(model.named_buffers())
    assert bufs and state_bytes(model) > sum(p.numel() * 4 for p in model.parameters())
    # every client downloads and uploads the whole state dict, buffers included
    assert s["bytes_total"] == 1 * 4 * 2 * state_bytes(model)
    eng = st.engine
    reps = eng.replicas[0]
    weights = [float(min(len(nd.y), 2 * scn.training.batch_size)) for nd in st.nodes]  # samples seen this round
    glob = dict(eng.global_[0].named_buffers())
    for name in bufs:
        local = [dict(r.module.named_buffers())[name] for r in reps]
        if name.endswith("num_batches_tracked"):
            assert int(glob[name]) == 2  # every client ran two steps
            continue
        want = sum(w * t for w, t in zip(weights, local)) / sum(weights)
        torch.testing.assert_close(glob[name], want, rtol=1e-6, atol=1e-7)
        assert not torch.equal(local[0], local[1])  # clients saw different data: averaging did something


def test_batch_junction_trunk_batch_norm_sees_the_joined_batch():
    cut = 1  # fronts: the stem; trunk: layer1.. on the server, its first BN sees all devices' samples
    scn = digits_star([BN_MODEL, IMAGES, "training.rounds=1", "training.max_steps_per_round=1",
                       f"plan.cut={cut}", "training.optimizer.momentum=0", "data.partition.kind=shards"],
                      strategy="fpl")
    st = setup(scn)
    run(scn, st=st)
    trunk = st.engine.replicas[1]
    assert len(trunk) == 1 and len(st.engine.replicas[0]) == 4
    got = dict(trunk[0].module.named_buffers())
    # reference: the fronts' first-step outputs, stacked in node order, through a fresh trunk
    model = build_model(scn.model, (3, 16, 16), 10, seed=scn.seed)
    n = len(model.block_names)
    front, ref_trunk = stage_module(model, 0, cut), stage_module(model, cut, n)
    acts = []
    for nd in st.nodes:
        first = batches(nd, scn.seed, 1, 1, scn.training.batch_size)[0]
        acts.append(front(nd.x[first]))
    ref_trunk(torch.cat(acts))
    ref = dict(ref_trunk.named_buffers())
    for name, b in ref.items():
        # one forward pass (one step): a few ulps whatever the kernels
        torch.testing.assert_close(got[name], b, rtol=1e-5, atol=1e-6, msg=name)
    # one pass over the joined batch, not one per device: batches fed one after another would count
    # four and weigh the devices by the running average's momentum
    assert int(got["blocks.layer1.0.bn1.num_batches_tracked"]) == 1
    one_by_one = stage_module(model, cut, n)
    for a in acts:
        one_by_one(a)
    key = "blocks.layer1.0.bn1.running_mean"
    assert not torch.allclose(dict(one_by_one.named_buffers())[key], ref[key], rtol=1e-2, atol=1e-4)


def test_group_norm_model_has_nothing_but_weights_to_move():
    scn = digits_star(["model={name: resnet18, width: 0.0625, depth: 0.5, norm: group}", IMAGES,
                       "training.rounds=1", "training.max_steps_per_round=1"])
    s = run(scn).summary
    model = build_model(scn.model, (3, 16, 16), 10, seed=0)
    assert not list(model.buffers())
    assert s["bytes_total"] == 4 * 2 * sum(p.numel() * 4 for p in model.parameters())


@pytest.mark.equivalence
def test_splitfed_on_a_batch_norm_resnet_equals_fedavg():
    """SplitFed runs FedAvg's arithmetic split in two: weights and BN buffers end the same."""
    from flexpl.sim.engine import path_state

    sets = [BN_MODEL, IMAGES, "training.rounds=2", "training.max_steps_per_round=3"]
    states = {}
    for strategy, extra in (("fl", []), ("sfl", ["plan.cut=2"])):
        scn = digits_star([*sets, *extra], strategy=strategy)
        st = setup(scn)
        run(scn, st=st)
        states[strategy] = path_state(st.engine, "dev0")
    assert states["fl"].keys() == states["sfl"].keys()
    # six SGD steps in all (2 rounds x 3): round-off from the split adds up over a few steps and has
    # no rounds to be amplified over, so the bound holds on any CPU's kernels
    for k, v in states["fl"].items():
        torch.testing.assert_close(states["sfl"][k], v, rtol=1e-5, atol=1e-6, msg=k)
