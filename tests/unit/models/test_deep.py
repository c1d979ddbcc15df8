"""The deep-network zoo: torchvision's parameter counts, published multiply-adds, exact splits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from flexpl.errors import UserError
from flexpl.models import DEFAULT_CUTS, ZOO, build_model, count_params
from flexpl.sim.engine import stage_module

# torchvision's published parameter counts at 224x224 / 1000 classes
PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
          "vgg11": 132_863_336, "vgg16": 138_357_544, "mobilenet_v2": 3_504_872,
          "vgg11_bn": 132_868_840, "vgg16_bn": 138_365_992}
# published multiply-adds (G) at 224x224: torchvision's model tables
MACS = {"resnet18": 1.82, "resnet50": 4.09, "vgg16": 15.47, "mobilenet_v2": 0.30}

# small variants that run in milliseconds: (input shape, options)
SMALL = {
    "resnet18": ((3, 32, 32), {"width": 0.125}),
    "resnet34": ((3, 28, 28), {"width": 0.125, "depth": 0.34}),
    "resnet50": ((3, 64, 64), {"width": 0.0625, "depth": 0.34}),
    "vgg11": ((3, 32, 32), {"width": 0.0625, "hidden": 32}),
    "vgg16": ((3, 32, 32), {"width": 0.0625, "hidden": 32, "batch_norm": True}),
    "vgg16_bn": ((3, 32, 32), {"width": 0.0625, "hidden": 32}),
    "vgg11_bn": ((3, 32, 32), {"width": 0.0625, "hidden": 32}),
    "mobilenet_v2": ((3, 64, 64), {"width": 0.25, "depth": 0.34}),
    "vit-tiny": ((3, 16, 16), {"dim": 24, "heads": 2, "depth": 2}),
}


def _meta_macs(name: str) -> float:
    model = build_model(name, (3, 224, 224), 1000, seed=0).to("meta")
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, 224, 224, device="meta"))
    return counter.get_total_flops() / 2  # FlopCounterMode's default mapping: 2 FLOPs per multiply-add


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_equal_torchvision(name):
    assert count_params(build_model(name, (3, 224, 224), 1000, seed=0)) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(MACS))
def test_multiply_adds_within_two_percent_of_published(name):
    assert _meta_macs(name) / 1e9 == pytest.approx(MACS[name], rel=0.02)


def test_vit_tiny_has_deit_tiny_size():
    model = build_model("vit-tiny", (3, 224, 224), 1000, seed=0)
    assert count_params(model) == 5_717_416  # DeiT-Ti / timm vit_tiny_patch16_224
    assert model.block_names == ["embed", *[f"block{i}" for i in range(1, 13)], "head"]
    assert _meta_macs("vit-tiny") / 1e9 == pytest.approx(1.26, rel=0.02)


def test_stems_follow_the_input_size():
    small = build_model("resnet18", (3, 32, 32), 10, seed=0)
    large = build_model("resnet18", (3, 224, 224), 10, seed=0)
    assert small.blocks["stem"][0].kernel_size == (3, 3) and len(small.blocks["stem"]) == 3
    assert large.blocks["stem"][0].kernel_size == (7, 7) and isinstance(large.blocks["stem"][3], torch.nn.MaxPool2d)
    forced = build_model({"name": "resnet18", "stem": "cifar"}, (3, 64, 64), 10, seed=0)
    assert forced.blocks["stem"][0].kernel_size == (3, 3)
    assert build_model("resnet18", (1, 28, 28), 10, seed=0)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_width_multiplier_shrinks_the_model():
    full = count_params(build_model("resnet18", (3, 32, 32), 10, seed=0))
    quarter = count_params(build_model({"name": "resnet18", "width": 0.25}, (3, 32, 32), 10, seed=0))
    assert quarter < full / 10


def test_group_norm_has_no_batch_statistics():
    model = build_model({"name": "resnet18", "norm": "group", "width": 0.25}, (3, 32, 32), 10, seed=0)
    assert not list(model.buffers())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    assert list(build_model({"name": "mobilenet_v2", "norm": "group", "width": 0.25}, (3, 32, 32), 10,
                            seed=0).buffers()) == []


def test_too_small_inputs_are_refused():
    with pytest.raises(UserError, match="at least 16x16"):
        build_model("resnet18", (1, 8, 8), 10, seed=0)
    with pytest.raises(UserError, match="at least 64x64"):
        build_model("mobilenet_v2", (3, 32, 32), 10, seed=0)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_cut_of_every_model_equals_the_unsplit_model(name):
    shape, opts = SMALL[name]
    model = build_model({"name": name, **opts}, shape, 10, seed=0)
    assert 0 < DEFAULT_CUTS[name] < len(model.block_names)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    torch.manual_seed(5)  # dropout draws the same masks in the same order
    ref_loss = F.cross_entropy(model(x), y)
    ref_loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    n_blocks = len(model.block_names)
    fresh = build_model({"name": name, **opts}, shape, 10, seed=0)
    for cut in range(1, n_blocks):
        front, back = stage_module(fresh, 0, cut), stage_module(fresh, cut, n_blocks)
        torch.manual_seed(5)
        act = front(x)
        sent = act.detach().requires_grad_()  # what crosses the cut
        loss = F.cross_entropy(back(sent), y)
        loss.backward()
        act.backward(sent.grad)
        assert torch.equal(loss, ref_loss), (name, cut)
        grads = {n: p.grad for part in (front, back) for n, p in part.named_parameters()}
        assert grads.keys() == ref.keys()
        for n, g in grads.items():
            # one backward pass: the split only changes where autograd's sums are cut, so the round-off
            # is a few ulps of one step whatever the CPU's kernels
            torch.testing.assert_close(g, ref[n], rtol=1e-5, atol=1e-6, msg=f"{name} cut {cut}: {n}")
        # batch norm saw the same batch on both sides of the cut
        split_bufs = {n: b for part in (front, back) for n, b in part.named_buffers()}
        for n, b in model.named_buffers():
            torch.testing.assert_close(split_bufs[n], b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("spec", "fragment"), [
    ({"name": "resnet18", "width": 0}, "model.width"),
    ({"name": "resnet18", "width": "wide"}, "model.width"),
    ({"name": "resnet50", "norm": "layer"}, "model.norm"),
    ({"name": "resnet34", "stem": "huge"}, "model.stem"),
    ({"name": "vgg16", "batch_norm": "yes"}, "model.batch_norm"),
    ({"name": "vgg16", "dropout": 1.5}, "model.dropout"),
    ({"name": "mobilenet_v2", "depth": -1}, "model.depth"),
    ({"name": "vit-tiny", "patch": 5}, "model.patch"),
    ({"name": "vit-tiny", "heads": 5}, "model.heads"),
    ({"name": "resnet18", "colour": "red"}, "bad options"),
])
def test_bad_model_options_are_one_line_errors(spec, fragment):
    with pytest.raises(UserError) as err:
        build_model(spec, (3, 32, 32), 10, seed=0)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_the_zoo_lists_every_deep_model():
    assert {"resnet18", "resnet34", "resnet50", "vgg11", "vgg16", "vgg16_bn", "mobilenet_v2", "vit-tiny"} <= set(ZOO)
