"""``engine.device`` and ``training.precision`` (flexpl.sim.device): an explicit CPU changes nothing,
bad or absent devices are one-line errors, bf16 computes in bf16 and bills what fp32 bills."""

from __future__ import annotations

import builtins

import pytest
import torch

from flexpl.cli import main
from flexpl.errors import UserError
from flexpl.plan.layout import PRESETS
from flexpl.sim import device as devmod
from flexpl.sim import evaluate, simulator
from flexpl.sim.simulator import run, setup
from tests.conftest import digits_edges, digits_star

# cost columns of a round: what the bill says, whatever the device or precision
BILL = ("flops", "bytes", "sim_time_s", "energy_j", "eval_flops", "device_energy_j")


def _drop_run_keys(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("wall_s", "scenario_sha256")}


@pytest.mark.parametrize("strategy", ["fl", "fpl"])
def test_explicit_cpu_is_bitwise_the_default(strategy: str) -> None:
    sets = [f"strategy={strategy}", "training.rounds=2", "training.max_steps_per_round=4"]
    default = run(digits_star(sets))  # (auto: the CPU, also on a machine with a GPU; tests/conftest.py)
    cpu = run(digits_star([*sets, "engine.device=cpu"]))
    assert cpu.rounds == default.rounds  # accuracies, losses and the bill, bit for bit
    assert _drop_run_keys(cpu.summary) == _drop_run_keys(default.summary)


def test_auto_resolves_to_cuda_only_where_there_is_one() -> None:
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert devmod.resolve_device("auto").type == want
    assert devmod.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "CPU", "cuda:0:1"])
def test_a_bad_device_string_is_one_line_naming_the_field(bad: str) -> None:
    with pytest.raises(UserError, match=r"^engine\.device: .* use auto, cpu, cuda or cuda:N$"):
        digits_star([f"engine.device={bad}"])


def test_cuda_without_cuda_is_a_one_line_error_exit_2(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError, match=r"^engine\.device: 'cuda:1' asks for CUDA but .*use engine\.device=cpu"):
        setup(digits_star(["engine.device=cuda:1"]))
    out = tmp_path / "r"
    out.mkdir()
    (out / "summary.json").write_text('{"precious": true}\n')
    assert main(["run", "digits-star", "--device", "cuda", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "engine.device: 'cuda' asks for CUDA" in err and "Traceback" not in err
    assert (out / "summary.json").read_text() == '{"precious": true}\n'  # nothing already written is lost


def test_bf16_where_unsupported_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devmod, "bf16_supported", lambda device: False)
    with pytest.raises(UserError, match=r"^training\.precision: bf16 autocast is not supported .*precision=fp32$"):
        setup(digits_star(["training.precision=bf16"]))


def test_bf16_on_cpu_computes_in_bf16_and_bills_what_fp32_bills(monkeypatch: pytest.MonkeyPatch) -> None:
    # CPU autocast runs (emulated) where oneDNN has no native bf16; support is forced so that the path runs here
    monkeypatch.setattr(devmod, "bf16_supported", lambda device: True)
    sets = ["strategy=fpl", "training.rounds=1", "training.max_steps_per_round=6"]
    cnn = {"name": "cnn"}
    fp32 = run(digits_star(sets, model=cnn))
    seen: list[torch.dtype] = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.append(o.dtype) if isinstance(m, torch.nn.Conv2d) and torch.is_tensor(o) else None)
    try:
        bf16 = run(digits_star([*sets, "training.precision=bf16"], model=cnn))
    finally:
        handle.remove()
    assert torch.bfloat16 in seen  # the convolutions did compute in bf16
    for a, b in zip(fp32.rounds, bf16.rounds, strict=True):
        assert {k: a[k] for k in BILL} == {k: b[k] for k in BILL}  # FLOPs, bytes (fp32 on the wire), clock, energy
    assert bf16.rounds[0]["train_loss"] != fp32.rounds[0]["train_loss"]  # ... while the arithmetic is bf16's
    assert abs(bf16.rounds[0]["train_loss"] - fp32.rounds[0]["train_loss"]) < 0.1


def test_a_parallel_executor_on_bf16_asked_explicitly_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devmod, "bf16_supported", lambda device: True)
    with pytest.raises(UserError, match=r"^engine\.executor: vectorized runs fp32 on the CPU only"):
        setup(digits_star(["strategy=fl", "training.precision=bf16", "engine.executor=vectorized"]))


def _as_if_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The meta device stands in for a GPU: torch refuses to mix a CPU tensor with another device's memory whatever
    that device is. Evaluation runs its paths there too; only a figure read off a meta tensor (no value) gives 0."""
    monkeypatch.setattr(simulator, "resolve_device", lambda spec: torch.device("meta"))
    monkeypatch.setattr(evaluate, "float", lambda v: 0.0 if torch.is_tensor(v) and v.is_meta else builtins.float(v),
                        raising=False)


def _same_bill_on_meta(scn_cpu, scn, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = run(scn_cpu)
    _as_if_on_a_gpu(monkeypatch)
    st = setup(scn)
    eng = st.engine
    assert eng.device.type == "meta"
    modules = [r.module for reps in eng.replicas for r in reps] + list(eng.global_.values())
    modules += list(eng.group_global.values()) + [w.module for w in eng.working.values()]
    assert {p.device.type for m in modules for p in m.parameters()} == {"meta"}
    assert all(t.device.type == "meta" for a in eng.arenas.values() for t in a.params.values())
    meta = run(scn, st=st)
    for a, b in zip(cpu.rounds, meta.rounds, strict=True):
        assert {k: a[k] for k in BILL} == {k: b[k] for k in BILL}
        assert b["accuracy"] == 0.0 < a["accuracy"]  # (evaluated there: its figures read as 0)


SHORT = ["engine.executor=sequential", "training.rounds=2", "training.max_steps_per_round=2"]


@pytest.mark.parametrize("strategy", sorted(PRESETS))
def test_every_preset_runs_on_a_device_other_than_the_cpu(strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replicas, arenas, working models and averaged copies are built where the model is, and a round's steps,
    syncs, averages and evaluations (test set, validation split) run there; the bill, read from shapes, is the
    CPU's. Before the fix, a stacked replica's row was a CPU tensor over the device's memory: every preset with an
    arena or a working model failed to set up on CUDA."""
    make = digits_edges if strategy.startswith("fpl") else digits_star
    sets = [f"strategy={strategy}", *SHORT, "data.validation_fraction=0.1"]
    _same_bill_on_meta(make(sets), make(sets), monkeypatch)


@pytest.mark.parametrize("make,sets", [
    (digits_star, ["strategy=fl", "failures.dropout=0.3"]),  # rows re-downloaded by index (index_copy_ on a CPU index)
    (digits_edges, ["strategy=fpl", "failures.host_failure=0.3", "failures.link_outage=0.2"]),
    (digits_star, ["strategy=fl", "training.aggregator.kind=fedprox", "training.aggregator.mu=0.1"]),
    (digits_star, ["strategy=fl", "training.aggregator.kind=fedadam"]),
    (digits_edges, ["strategy=fpl-sync", "training.optimizer.name=adam"]),
    (digits_star, ["strategy=sfl", "training.optimizer.name=adam", "failures.dropout=0.4"]),  # rows reset by index
    (digits_edges, ["strategy=fpl", "model={name: resnet18, width: 0.125}", "data.transform={resize: 16}"]),
], ids=["dropout", "host-failure", "fedprox", "fedadam", "adam", "adam-dropout", "batch-norm"])
def test_failures_aggregators_and_batch_norm_run_on_a_device_other_than_the_cpu(
        make, sets: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _same_bill_on_meta(make([*sets, *SHORT]), make([*sets, *SHORT]), monkeypatch)
