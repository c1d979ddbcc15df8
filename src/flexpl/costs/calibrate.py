"""``flexpl calibrate``: measure this machine's effective FLOP/s and write a device profile.

    flexpl calibrate --profile-name my-laptop --out my-laptop.yaml

Times one forward and backward pass (parameter gradients, as a training step does) of
each zoo model (``mlp``, ``cnn``, ``lenet5``) on 28x28 inputs with a batch of 32, takes the
median wall time of several repetitions, and counts the FLOPs of the same passes with
``flexpl.costs.flops.count_fwd_bwd`` (the counter the simulator uses, 2 FLOPs per
multiply-add and every other arithmetic op counted: [Note: FLOP convention]). FLOPs over time gives the effective training throughput the virtual clock
needs. Power comes from the CPU's RAPL energy counter when Linux lets us read it, else from
``--active-power-w``/``--idle-power-w`` (marked as assumed); memory from ``os.sysconf``.

The output is one device-profile mapping (fields of ``DeviceProfile``) with comments saying
what was measured, when and how; a scenario uses it as ``profile: my-laptop.yaml``.
"""

from __future__ import annotations

import datetime as _dt
import glob
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from flexpl.errors import UserError

MODELS = ("mlp", "cnn", "lenet5")
INPUT_SHAPE = (1, 28, 28)


def time_model(name: str, batch: int, repeats: int) -> dict[str, Any]:
    """Median wall time and FLOPs of one forward+backward pass of zoo model ``name``."""
    import torch
    import torch.nn.functional as F

    from flexpl.costs.flops import count_fwd_bwd
    from flexpl.models import build_model

    with torch.random.fork_rng(devices=[]):  # build_model seeds the global RNG
        model = build_model(name, INPUT_SHAPE, 10, seed=0)
    fwd, bwd = count_fwd_bwd(model, (batch, *INPUT_SHAPE), input_grad=False)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *INPUT_SHAPE), generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)

    def once() -> float:
        t = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        dt = time.perf_counter() - t
        model.zero_grad(set_to_none=True)
        return dt

    for _ in range(2):  # warm-up: allocator, kernels, caches
        once()
    times = [once() for _ in range(repeats)]
    med = statistics.median(times)
    return {"model": name, "flops": fwd + bwd, "median_s": med, "flops_per_s": (fwd + bwd) / med,
            "repeats": repeats}


def _rapl_files() -> list[str]:
    """Readable RAPL package energy counters (microjoules), if Linux exposes them to us."""
    out = []
    for path in sorted(glob.glob("/sys/class/powercap/intel-rapl:[0-9]*/energy_uj")):
        if path.count(":") == 1 and os.access(path, os.R_OK):
            out.append(path)
    return out


def _read_uj(files: list[str]) -> int | None:
    try:
        return sum(int(Path(f).read_text().strip()) for f in files)
    except (OSError, ValueError):
        return None


def measure_power(files: list[str], work: Any, idle_s: float = 1.0) -> tuple[float, float] | None:
    """(active W, idle W) from RAPL: energy while ``work()`` runs, and over ``idle_s`` of sleep."""
    e0, t0 = _read_uj(files), time.perf_counter()
    work()
    e1, t1 = _read_uj(files), time.perf_counter()
    time.sleep(idle_s)
    e2, t2 = _read_uj(files), time.perf_counter()
    if None in (e0, e1, e2) or e1 < e0 or e2 < e1:  # unreadable or wrapped around
        return None
    return (e1 - e0) * 1e-6 / (t1 - t0), (e2 - e1) * 1e-6 / (t2 - t1)


def physical_memory() -> float:
    """Bytes of physical memory (page size x pages), or 4e9 where ``os.sysconf`` cannot tell."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 4e9


def calibrate(repeats: int, batch: int, active_w: float | None, idle_w: float | None
              ) -> tuple[dict[str, float], list[dict[str, Any]], dict[str, str]]:
    """Measure; returns (profile fields, per-model timings, how each field was obtained)."""
    import torch

    results: list[dict[str, Any]] = []
    rapl = _rapl_files()
    power = measure_power(rapl, lambda: results.extend(time_model(m, batch, repeats) for m in MODELS)) \
        if rapl else None
    if not results:
        results = [time_model(m, batch, repeats) for m in MODELS]
    total_flops = sum(r["flops"] for r in results)
    total_time = sum(r["median_s"] for r in results)
    how = {"flops_per_s": f"measured: {total_flops:.4g} FLOPs / {total_time:.4g} s (sum of the models' "
                          f"median times), torch {torch.__version__}, {torch.get_num_threads()} threads"}
    if power is not None and active_w is None and idle_w is None:
        active, idle = power
        how["active_power_w"] = "measured: RAPL package energy while timing"
        how["idle_power_w"] = "measured: RAPL package energy over 1 s of sleep"
    else:
        active = 65.0 if active_w is None else active_w
        idle = 10.0 if idle_w is None else idle_w
        how["active_power_w"] = ("given: --active-power-w" if active_w is not None
                                 else "A: assumed (no readable RAPL counter); pass --active-power-w")
        how["idle_power_w"] = ("given: --idle-power-w" if idle_w is not None
                               else "A: assumed (no readable RAPL counter); pass --idle-power-w")
    how["memory_bytes"] = "measured: os.sysconf page size x physical pages"
    fields = {"flops_per_s": total_flops / total_time, "active_power_w": float(active), "idle_power_w": float(idle),
              "memory_bytes": physical_memory()}
    return fields, results, how


def profile_yaml(name: str, fields: dict[str, float], results: list[dict[str, Any]], how: dict[str, str],
                 batch: int) -> str:
    """The profile file: one mapping of DeviceProfile fields, each commented with how it was obtained."""
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [f"# {name}: device profile measured by `flexpl calibrate` on {platform.node() or 'this machine'} "
             f"at {when}",
             f"# ({platform.processor() or platform.machine()}, {platform.system()} {platform.release()}).",
             f"# flops_per_s: FLOPs of one forward+backward pass of each zoo model on {'x'.join(map(str, INPUT_SHAPE))} "
             f"inputs, batch {batch}",
             "#   (counted with flexpl.costs.flops.count_fwd_bwd, 2 FLOPs per multiply-add, element-wise ops too), over the median "
             "wall time of the repetitions:"]
    for r in results:
        lines.append(f"#   {r['model']:7s} {r['flops']:.4g} FLOPs in {r['median_s'] * 1e3:.3f} ms (median of "
                     f"{r['repeats']}) = {r['flops_per_s']:.4g} FLOP/s")
    lines.append("# Use it in a scenario as: nodes: - {name: me, profile: path/to/this.yaml}")
    for key in ("flops_per_s", "active_power_w", "idle_power_w", "memory_bytes"):
        lines.append(f"{key}: {fields[key]:.6e}  # {how[key]}")
    return "\n".join(lines) + "\n"


def save_profile(out: Path, name: str, fields: dict[str, float], results: list[dict[str, Any]],
                 how: dict[str, str], batch: int) -> None:
    """Write the profile (:func:`profile_yaml`) to ``out`` and check that it loads as a device profile."""
    from flexpl.io.results import atomic_write
    from flexpl.system.profiles import device_profile

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, profile_yaml(name, fields, results, how, batch))
    except OSError as exc:
        raise UserError(f"--out: cannot write '{out}': {exc.strerror or exc}") from None
    device_profile(str(out), field="--out")  # what we wrote must load as a profile
