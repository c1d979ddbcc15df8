"""Stages counted block by block (flexpl.planner.shapes, [Note: stages from blocks]) = the direct count.

Stages [a, b) of small zoo models, with and without an input gradient and the loss, against
``count_fwd_bwd`` (the engine's counter) and ``saved_activation_bytes`` on the whole stage.
"""

from __future__ import annotations

import pytest

from flexpl.costs.flops import count_fwd_bwd
from flexpl.planner.shapes import StageCosts, saved_activation_bytes

MODELS = [
    ("cnn", (1, 28, 28)),
    ({"name": "mlp", "hidden": [16, 8]}, (1, 8, 8)),
    ({"name": "resnet18", "width": 0.125}, (3, 32, 32)),
    ({"name": "vgg11_bn", "width": 0.125}, (3, 32, 32)),
    ("vit-tiny", (3, 32, 32)),
]


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("spec,shape", MODELS, ids=lambda v: str(v)[:24])
def test_stages_from_blocks_equal_the_direct_count(spec, shape, grad):
    """Every two-block stage (each block counted in one pass for FLOPs and saved bytes, and the tensor
    the two share) and the whole model with the loss."""
    try:
        costs = StageCosts(spec, 10, 0)
        variant = (shape, None, 1)
        n = len(costs.model(variant).block_names)
    except Exception as exc:  # a model that does not take this input or option
        pytest.skip(f"{spec}: {exc}")
    ranges = [(a, a + 2) for a in range(n - 1)] + [(0, n)]
    for a, b in ranges:
        loss = b == n
        x = (2, *shape) if a == 0 else (2, *costs._count(variant, 0, a, (2, *shape), False).out_shape[1:])
        got = costs._count(variant, a, b, x, grad, loss)
        mod = costs.stage(variant, a, b)
        fwd, bwd = count_fwd_bwd(mod, x, grad, loss=loss)
        out, esize, saved = saved_activation_bytes(mod, x, grad)
        assert (got.fwd, got.bwd, got.out_shape, got.out_esize, got.saved_bytes) == (
            fwd, bwd, out, esize, saved), (spec, a, b, grad)


def test_the_ecut_rules_front_costs_are_the_stage_counts():
    from flexpl.plan.device_cuts import front_costs
    from flexpl.planner.shapes import StageFront

    costs = StageCosts("cnn", 10, 0)
    variant = ((1, 28, 28), None, 1)
    model = costs.model(variant)
    direct, shared = front_costs(model, (1, 28, 28)), StageFront(costs, variant, (1, 28, 28))
    assert all(direct(d) == shared(d) for d in range(1, len(model.block_names) + 1))


@pytest.mark.parametrize("spec,shape", MODELS, ids=lambda v: str(v)[:24])
def test_stage_weights_from_blocks_equal_the_stage(spec, shape):
    costs = StageCosts(spec, 10, 0)
    variant = (shape, None, 1)
    n = len(costs.model(variant).block_names)
    for a in range(n):
        for b in range(a, n + 1):
            mod = costs.stage(variant, a, b)
            ps, sd = list(mod.parameters()), mod.state_dict().values()
            assert costs.weights(variant, a, b) == (
                sum(p.numel() for p in ps), sum(p.numel() * p.element_size() for p in ps if p.requires_grad),
                sum(t.numel() * t.element_size() for t in sd))
            assert costs.weights(variant, a, b, trainable_count=True)[0] == sum(
                p.numel() for p in ps if p.requires_grad)
            assert costs.float_elements(variant, a, b) == sum(t.numel() for t in sd if t.is_floating_point())
