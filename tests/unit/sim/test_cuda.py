"""``engine.device: cuda`` where torch sees a GPU (marker ``cuda``; skipped elsewhere, and run on a GPU machine by
``benchmarks/gpu_device.sh``): training, evaluation and batches on the GPU, the bill what the CPU bills, bf16
computing in bf16, a checkpoint taken on the GPU resuming on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flexpl.sim import device as devmod
from flexpl.sim.node_data import NodeData
from flexpl.sim.simulator import run
from tests.conftest import digits_edges, digits_star

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA device (benchmarks/gpu_device.sh runs these on a GPU machine)")]

# cost columns of a round: what the bill says, whatever the device or precision
BILL = ("flops", "bytes", "sim_time_s", "energy_j", "eval_flops", "device_energy_j")
SETS = ["training.rounds=2", "training.max_steps_per_round=4"]


def _scenario(strategy: str, device: str, extra: list[str] | None = None, **top):
    make = digits_edges if strategy.startswith("fpl") else digits_star  # fpl: one trunk per edge
    return make([f"strategy={strategy}", f"engine.device={device}", *SETS, *(extra or [])], **top)


def test_auto_is_the_gpu_where_there_is_one() -> None:
    assert devmod.resolve_device("auto").type == "cuda"
    assert devmod.resolve_device(f"cuda:{torch.cuda.device_count() - 1}").type == "cuda"


@pytest.mark.parametrize("strategy", ["fl", "sfl", "fpl", "mp"])
def test_the_gpu_bills_what_the_cpu_bills_and_learns_the_same(strategy: str) -> None:
    cpu = run(_scenario(strategy, "cpu"))
    gpu = run(_scenario(strategy, "cuda"))
    for a, b in zip(cpu.rounds, gpu.rounds, strict=True):
        assert {k: a[k] for k in BILL} == {k: b[k] for k in BILL}  # FLOPs, bytes, clock, energy: from shapes
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)  # the same arithmetic, to round-off
        assert abs(b["accuracy"] - a["accuracy"]) <= 0.01  # (a test sample or two may flip)


def test_training_evaluation_and_batches_run_on_the_gpu() -> None:
    seen: set[str] = set()
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.add(f"{type(m).__name__}:{i[0].device.type}") if i and torch.is_tensor(i[0]) else None)
    try:
        res = run(_scenario("fpl", "cuda", model={"name": "cnn"}))
    finally:
        handle.remove()
    # training and evaluation computed on the GPU (shape walks count FLOPs on the meta device)
    assert {"Conv2d:cuda", "Linear:cuda"} <= seen and not {"Conv2d:cpu", "Linear:cpu"} & seen, seen
    assert res.rounds[-1]["accuracy"] > 0.1


def test_a_batch_reaches_the_gpu_through_pinned_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = torch.randn(50, 3, 4, 4), torch.arange(50) % 10
    nd = NodeData("dev0", x, y[10:40], 0, index=torch.arange(10, 40))  # rows 10-39 of the whole set, its labels
    pinned: list[bool] = []
    real = torch.index_select

    def spy(src, dim, index, *, out=None):
        pinned.append(out is not None and out.is_pinned())
        return real(src, dim, index, out=out)

    monkeypatch.setattr(devmod.torch, "index_select", spy)
    idx = torch.tensor([3, 0, 7])
    xb, yb = nd.batch(idx, torch.device("cuda"))
    assert xb.device.type == "cuda" and yb.device.type == "cuda"
    assert pinned and all(pinned)  # gathered into page-locked memory, then copied asynchronously
    torch.testing.assert_close(xb.cpu(), x[torch.tensor([13, 10, 17])], rtol=0, atol=0)
    assert torch.equal(yb.cpu(), y[torch.tensor([13, 10, 17])])


def test_bf16_on_the_gpu_computes_in_bf16_and_bills_what_fp32_bills() -> None:
    cnn = {"name": "cnn"}
    fp32 = run(_scenario("fpl", "cuda", model=cnn))
    seen: list[torch.dtype] = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.append(o.dtype) if isinstance(m, torch.nn.Conv2d) and torch.is_tensor(o) else None)
    try:
        bf16 = run(_scenario("fpl", "cuda", ["training.precision=bf16"], model=cnn))
    finally:
        handle.remove()
    assert torch.bfloat16 in seen
    for a, b in zip(fp32.rounds, bf16.rounds, strict=True):
        assert {k: a[k] for k in BILL} == {k: b[k] for k in BILL}  # weights and activations billed at fp32
    assert abs(bf16.rounds[0]["train_loss"] - fp32.rounds[0]["train_loss"]) < 0.1


class _Stop(Exception):
    pass


def _stop_after(n: int):
    def on_round(row: dict) -> None:
        if row["round"] == n:
            raise _Stop
    return on_round


def test_a_checkpoint_taken_on_the_gpu_resumes_on_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flexpl.api import simulate

    sets = {"strategy": "fpl", "engine.device": "auto", "training.rounds": 3, "training.max_steps_per_round": 4,
            "training.checkpoint_every": 1}
    scn = digits_star([f"{k}={v}" for k, v in sets.items()])
    whole = simulate(scn, out=tmp_path / "whole")
    with pytest.raises(_Stop):  # stopped after round 2, on the GPU
        simulate(scn, out=tmp_path / "cut", on_round=_stop_after(2))
    # the same scenario (engine.device: auto) resumed where no GPU is seen: the file is read onto the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cont = simulate(scn, out=tmp_path / "cut", resume=True)
    assert [r["round"] for r in cont.rounds] == [1, 2, 3]
    assert {k: cont.rounds[-1][k] for k in BILL} == {k: whole.rounds[-1][k] for k in BILL}
    assert cont.rounds[-1]["train_loss"] == pytest.approx(whole.rounds[-1]["train_loss"], rel=1e-3)
