"""Simulator speed: one simulated round against one plain centralized epoch over the same samples.

For FedAvg (``fl``) and FPL (``fpl``), with the CNN on 10 and 100 clients and the MLP on
100 and 1,000 clients (Fashion-MNIST, IID for the CNN, Dirichlet 0.5 for the MLP, as in
the built-in ``cnn-100`` and ``mlp-1000`` scenarios), it times one simulated round of one
local epoch (training, syncs and cost accounting; the test-set evaluation is left out, as
the centralized side has none) and one centralized epoch of a plain PyTorch loop over the
same samples with the same batch size and optimizer, side by side in this process,
``--repeats`` times, and prints medians and ratios, for the first round (which also pays
one-time costs) and for the later rounds of a ``--rounds`` run. The engine picks its execution mode
itself (``engine.executor: auto``); the table says which. Targets: ratio <= 0.95 for the
CNN cases, <= 0.5 for the MLP cases.

The centralized floor is timed twice per repeat: with torch's default thread count (what
a plain script gets) and with one thread; ``ratio`` divides by the default-threads time,
``ratio_best`` by the faster of the two (the stricter floor).

    python benchmarks/simulator.py [--samples 60000] [--repeats 3] [--cases fl-cnn-10,...]
    python benchmarks/simulator.py --side-by-side [--pythons new=.venv/bin/python,base=OTHER/python]
    python benchmarks/simulator.py --sampling [--rounds 3] [--pythons new=.venv/bin/python,base=OTHER/python]

``--side-by-side``: the issue's ``flexpl run mlp-1000`` (IID, batch 10, 2 rounds) against a plain
2-process FedAvg loop, each in a process of its own: whole-process wall, round walls, CPU seconds
and peak RSS of the process tree. ``--sampling``: 10,000 clients at 1 % a round against 100 at
100 % (6 samples each): set-up and round walls. See the section below ``main``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import overhead  # the plain centralized loop, shared with benchmarks/overhead.py
import torch

from flexpl.config.scenario import load_scenario
from flexpl.data import Dataset, load_dataset
from flexpl.sim.exec.policy import threads as threads_ctx
from flexpl.sim.simulator import run, setup

CASES = ["fl-cnn-10", "fpl-cnn-10", "fl-cnn-100", "fpl-cnn-100",
         "fl-mlp-100", "fpl-mlp-100", "fl-mlp-1000", "fpl-mlp-1000"]
TARGET = {"cnn": 0.95, "mlp": 0.5}


def case_sets(case: str) -> tuple[str, str, list[str]]:
    """Scenario name, model and ``--set`` items of a case such as ``fpl-mlp-100``."""
    strategy, model, clients = case.split("-")
    n = int(clients)
    base = "cnn-100" if model == "cnn" else "mlp-1000"
    sets = [f"strategy={strategy}", "training.rounds=1"]
    if base == "cnn-100" and n != 100:
        sets.append(f"nodes.1.count={n}")
        sets.append(f"links.0.count={n}")
    if base == "mlp-1000" and n != 1000:
        sets.append(f"nodes.1.count={n}")
        sets.append(f"links.0.count={n}")
    return base, model, sets


def centralized_epoch(model_name: str, data: Dataset, batch: int, threads: int, seed: int = 0) -> float:
    """Wall time of one plain epoch over every training sample (benchmarks/overhead.py's loop) on ``threads``."""
    with threads_ctx(threads):
        return overhead.centralized_epoch(model_name, data.train_x, data.train_y, batch, seed)


def simulated_rounds(case: str, data: Dataset, rounds: int) -> tuple[list[float], str, float]:
    """Wall time of each simulated round of ``case`` (set-up excluded), the mode used, and set-up time.

    The first round also pays one-time costs: forking worker processes, their first touch
    of the shared weights, and counting FLOPs of each new batch shape.
    """
    base, _, sets = case_sets(case)
    scn = load_scenario(base, [*sets, f"training.rounds={rounds}"])
    t = time.perf_counter()
    st = setup(scn, dataset=data)
    t_setup = time.perf_counter() - t
    marks = [time.perf_counter()]
    run(scn, st=st, evaluate=lambda _st: {}, on_round=lambda _row: marks.append(time.perf_counter()))
    return [b - a for a, b in zip(marks, marks[1:])], st.executor.mode, t_setup


def main() -> None:
    """Run every case and both centralized floors ``--repeats`` times; print medians and ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=60000, help="training samples (the full 60k by default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--rounds", type=int, default=2, help="rounds per run: the first, and the steady state after it")
    a = ap.parse_args()
    cases = a.cases.split(",")
    data = load_dataset("fashion-mnist", max_train=a.samples, max_test=100)
    threads = torch.get_num_threads()
    sim: dict[str, list[float]] = {c: [] for c in cases}
    later: dict[str, list[float]] = {c: [] for c in cases}
    setups: dict[str, list[float]] = {c: [] for c in cases}
    modes: dict[str, str] = {}
    cen: dict[tuple[str, int], list[float]] = {}
    models = sorted({case_sets(c)[1] for c in cases})
    load0 = os.getloadavg()
    for rep in range(a.repeats):
        for m in models:
            for th in sorted({threads, 1}):
                cen.setdefault((m, th), []).append(centralized_epoch(m, data, 32, th))
        for c in cases:
            walls, mode, t_setup = simulated_rounds(c, data, a.rounds)
            sim[c].append(walls[0])
            if len(walls) > 1:
                later[c].append(statistics.median(walls[1:]))
            setups[c].append(t_setup)
            modes[c] = mode
            print(f"  repeat {rep + 1}: {c:13s} rounds {[round(w, 2) for w in walls]} s ({mode})", flush=True)
    load1 = os.getloadavg()
    print(f"\n{len(data.train_y)} samples, batch 32, 1 local epoch, SGD lr 0.05 momentum 0.9; torch default threads "
          f"{threads}; {a.repeats} repeats; load average before {load0[0]:.2f}, after {load1[0]:.2f} "
          f"on {os.cpu_count()} cores")
    for (m, th), v in sorted(cen.items()):
        print(f"centralized {m} epoch, {th} thread(s): median {statistics.median(v):.2f} s  runs "
              f"{[round(x, 2) for x in v]}")
    print("\nround 1 pays the one-time costs (forks, first touch of shared memory, FLOP counts of new shapes); "
          "round 2+ is the median of the later rounds")
    print("\n| case | mode | round 1 s (median) | round 1 runs | round 2+ s (median) | centralized s | "
          "ratio round 1 | ratio round 2+ | ratio round 2+ vs best floor | target |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in cases:
        m = case_sets(c)[1]
        s = statistics.median(sim[c])
        s2 = statistics.median(later[c]) if later[c] else float("nan")
        c_def = statistics.median(cen[(m, threads)])
        c_best = min(statistics.median(cen[(m, th)]) for th in sorted({threads, 1}))
        ok = "met" if s / c_def <= TARGET[m] else ("met from round 2" if s2 / c_def <= TARGET[m] else "NOT met")
        print(f"| {c} | {modes[c]} | {s:.2f} | {[round(x, 2) for x in sim[c]]} | {s2:.2f} | {c_def:.2f} | "
              f"{s / c_def:.3f} | {s2 / c_def:.3f} | {s2 / c_best:.3f} | <= {TARGET[m]} ({ok}) |")
    print("\nset-up (not in the round time), median s: "
          + ", ".join(f"{c} {statistics.median(setups[c]):.2f}" for c in cases))


# ---------------------------------------------------------------- side by side with a plain FedAvg loop
#
#     python benchmarks/simulator.py --side-by-side [--pythons new=.venv/bin/python,base=...]
#     python benchmarks/simulator.py --sampling
#
# --side-by-side: the issue's command (``flexpl run mlp-1000 --set data.partition.kind=iid --set
# training.batch_size=10 --set training.rounds=2``, 1,000 IID clients, batch 10, 2 rounds, evaluation
# every round as the CLI does) in a process of its own, for FlexPL with its default executor and with
# engine.executor=vectorized, next to a plain PyTorch FedAvg loop written below (same model, data,
# partition, batch, optimizer and rounds; 2 forked worker processes of 1 thread, one model per worker
# loaded from the global weights for each client, evaluation every round). Each row: whole-process wall
# (interpreter start to exit), the wall of each round, and the peak RSS of the process tree (the sum over
# the process and its children, sampled every 20 ms from /proc).
# --sampling: set-up and round wall of 10,000 clients at clients_per_round 0.01 next to 100 clients at
# 1.0, each client holding 6 samples (so both train 600 samples a round), each case in a process of its
# own (peak RSS, process start to round 1), for each interpreter of --pythons.

ISSUE_SETS = ["data.partition.kind=iid", "training.batch_size=10", "training.rounds=2"]


def _tree_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` and all its descendants (from /proc; 0 once it is gone)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total


def _measure(cmd: list[str]) -> tuple[float, int, dict]:
    """Run ``cmd`` (a child of this script that prints one JSON line last); whole wall, peak tree RSS, its JSON."""
    import json
    import resource
    import subprocess

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        time.sleep(0.02)
    wall = time.perf_counter() - t
    out = proc.stdout.read().strip().splitlines()
    if proc.returncode != 0 or not out:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode})")
    ru2 = resource.getrusage(resource.RUSAGE_CHILDREN)  # CPU seconds of the tree (load-independent-ish)
    info = json.loads(out[-1])
    info["cpu_s"] = (ru2.ru_utime - ru.ru_utime) + (ru2.ru_stime - ru.ru_stime)
    return wall, peak, info


def _child_flexpl(sets: list[str]) -> None:
    """The FlexPL side: ``flexpl run mlp-1000 <sets>`` through the CLI, each round's wall timed."""
    import json
    import tempfile

    import flexpl.sim.simulator as sim
    from flexpl import cli

    real, marks, info = sim.run, [], {}

    def timed(scn, on_round=None, st=None, **kw):
        info["executor"] = st.executor.mode if st is not None else "?"
        marks.append(time.perf_counter())

        def mark(row):
            marks.append(time.perf_counter())
            if on_round:
                on_round(row)
        res = real(scn, on_round=mark, st=st, **kw)
        info["wall_s"] = res.summary["wall_s"]
        return res

    sim.run = timed
    with tempfile.TemporaryDirectory() as out:
        args = ["run", "mlp-1000", "--quiet", "--out", f"{out}/r"]
        for s in sets:
            args += ["--set", s]
        rc = cli.main(args)
    print(json.dumps({"rc": rc, "rounds": [b - a for a, b in zip(marks, marks[1:])], **info}))


def _plain_worker(conn, model, x, y, parts, glob, acc, batch: int, lr: float, momentum: float) -> None:
    """One worker of the plain loop: for each client it is sent, load the global weights into its one model,
    train one epoch with a fresh SGD, add weight x weights to its accumulator."""
    import torch.nn.functional as F

    torch.set_num_threads(1)
    names = list(glob)
    while True:
        msg = conn.recv()
        if msg is None:
            return
        rnd, clients = msg
        for t in acc.values():
            t.zero_()
        for c in clients:
            model.load_state_dict(glob)
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
            idx = parts[c]
            g = torch.Generator().manual_seed(rnd * 1_000_003 + c)
            for b in torch.randperm(len(idx), generator=g).split(batch):
                sel = idx[b]
                loss = F.cross_entropy(model(x[sel]), y[sel])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                for n, p in zip(names, model.state_dict().values()):
                    acc[n].add_(p, alpha=float(len(idx)))
        conn.send("done")


def _child_plain(clients: int, rounds: int, batch: int, workers: int) -> None:
    """The plain side: a FedAvg loop in plain PyTorch, ``workers`` forked processes of one thread each."""
    import copy
    import json
    import multiprocessing as mp

    from flexpl.config.scenario import load_scenario
    from flexpl.data import load_data, partition
    from flexpl.models import build_model

    marks = [time.perf_counter()]
    scn = load_scenario("mlp-1000", ISSUE_SETS)
    data = load_data(scn.data, scn.seed)
    parts = [torch.from_numpy(p) for p in partition(data.train_y.numpy(), clients, "iid", seed=scn.seed)]
    model = build_model("mlp", data.input_shape, data.num_classes, seed=scn.seed)
    glob = {k: v.clone().share_memory_() for k, v in model.state_dict().items()}
    accs = [{k: torch.zeros_like(v).share_memory_() for k, v in glob.items()} for _ in range(workers)]
    ctx = mp.get_context("fork")
    conns, procs = [], []
    for w in range(workers):
        a, b = ctx.Pipe()
        p = ctx.Process(target=_plain_worker, args=(b, copy.deepcopy(model), data.train_x, data.train_y, parts,
                                                    glob, accs[w], batch, 0.05, 0.9), daemon=True)
        p.start()
        conns.append(a)
        procs.append(p)
    total = float(sum(len(p) for p in parts))
    accs_out = []
    marks.append(time.perf_counter())  # set-up done
    for rnd in range(1, rounds + 1):
        for w in range(workers):
            conns[w].send((rnd, list(range(w, clients, workers))))
        for w in range(workers):
            conns[w].recv()
        with torch.no_grad():
            for k in glob:
                glob[k].copy_(sum(a[k] for a in accs) / total)
        model.load_state_dict(glob)
        with torch.no_grad():
            acc = float((model(data.test_x).argmax(1) == data.test_y).float().mean())
        accs_out.append(acc)
        marks.append(time.perf_counter())
    for c in conns:
        c.send(None)
    for p in procs:
        p.join()
    print(json.dumps({"setup": marks[1] - marks[0], "rounds": [b - a for a, b in zip(marks[1:], marks[2:])],
                      "accuracy": accs_out, "executor": f"plain, {workers} processes x 1 thread"}))


def side_by_side(pythons: list[tuple[str, str]], vectorized: set[str]) -> None:
    """Print FlexPL (each interpreter in ``pythons``; default executor, and vectorized) next to the plain loop."""
    import sys

    me = os.path.abspath(__file__)
    rows = []
    load0 = os.getloadavg()
    for label, py in pythons:
        variants = [("default", [])] + ([("vectorized", ["engine.executor=vectorized"])] if label in vectorized else [])
        for name, extra in variants:
            wall, rss, info = _measure([py, me, "--child", "flexpl", "--sets", ",".join(ISSUE_SETS + extra)])
            rows.append((f"FlexPL {label} ({name}: {info.get('executor')})", wall, info.get("wall_s"),
                         info["rounds"], rss, info["cpu_s"]))
            print(f"  {rows[-1][0]}: whole {wall:.1f} s, rounds {[round(r, 2) for r in info['rounds']]}, "
                  f"peak tree RSS {rss / 2**30:.2f} GiB (load {os.getloadavg()[0]:.2f})", flush=True)
    wall, rss, info = _measure([sys.executable, me, "--child", "plain"])
    rows.append((f"plain loop ({info['executor']})", wall, None, info["rounds"], rss, info["cpu_s"]))
    print(f"  plain: whole {wall:.1f} s, rounds {[round(r, 2) for r in info['rounds']]}, peak tree RSS "
          f"{rss / 2**30:.2f} GiB, accuracy {info['accuracy']}", flush=True)
    load1 = os.getloadavg()
    plain_round, plain_whole = statistics.median(rows[-1][3]), rows[-1][1]
    print(f"\nmlp-1000, {' '.join('--set ' + s for s in ISSUE_SETS)}; load average before "
          f"{' '.join(f'{v:.2f}' for v in load0)}, after {' '.join(f'{v:.2f}' for v in load1)} on "
          f"{os.cpu_count()} cores")
    print("| run | whole process s | run wall_s | round walls s | round / plain | whole / plain | "
          "CPU s (tree) | peak RSS (tree) GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, whole, wall_s, rounds, rss, cpu in rows:
        r = statistics.median(rounds)
        print(f"| {name} | {whole:.1f} | {'' if wall_s is None else f'{wall_s:.1f}'} | "
              f"{' / '.join(f'{x:.2f}' for x in rounds)} | {r / plain_round:.2f} | {whole / plain_whole:.2f} | "
              f"{cpu:.1f} | {rss / 2**30:.2f} |")
    print("targets: round / plain <= 1, whole / plain <= 1.2, peak RSS <= 1.5 GiB")


def sampling_case(clients: int, fraction: float, per_client: int, rounds: int) -> dict:
    """One case of ``--sampling`` in this process: a FedAvg MLP run over ``clients`` phones holding ``per_client``
    samples each, ``fraction`` of them per round. Seconds of the scenario load, of ``setup`` (what "set-up" means
    below), of ``run`` up to its first round, of each round, and of ``run`` after its last round."""
    t = time.perf_counter()
    scn = load_scenario("mlp-1000", [f"nodes.1.count={clients}", f"links.0.count={clients}",
                                     "data.partition.kind=iid", f"data.max_train={clients * per_client}",
                                     "data.max_test=1000", f"training.clients_per_round={fraction}",
                                     f"training.rounds={rounds}"])
    t_scn = time.perf_counter() - t
    t, c = time.perf_counter(), time.process_time()
    st = setup(scn)
    t_setup, c_setup = time.perf_counter() - t, time.process_time() - c
    marks, cpu = [time.perf_counter()], [time.process_time()]
    first: list[tuple[float, float]] = []
    real = st.engine.set_round

    def set_round(rnd: int, total: int) -> float:  # the first round starts here (after run's own preparations)
        if not first:
            first.append((time.perf_counter(), time.process_time()))
        return real(rnd, total)

    def on_round(_row: dict) -> None:
        marks.append(time.perf_counter())
        cpu.append(time.process_time())

    st.engine.set_round = set_round
    run(scn, st=st, on_round=on_round)
    end = time.perf_counter()
    walls = [b - a for a, b in zip([first[0][0], *marks[1:]], marks[1:])]
    cpus = [b - a for a, b in zip([first[0][1], *cpu[1:]], cpu[1:])]
    return {"scenario": t_scn, "setup": t_setup, "setup_cpu": c_setup, "prelude": first[0][0] - marks[0],
            "rounds": walls, "rounds_cpu": cpus, "after": end - marks[-1],
            "first_round_at": time.time() - (end - first[0][0]), "nodes": len(scn.data_nodes)}


def _child_sampling(clients: int, fraction: float, rounds: int) -> None:
    """One ``--sampling`` case in a process of its own (one JSON line: its phases and peak RSS)."""
    import json
    import resource

    sampling_case(10, 1.0, 6, 1)  # one-time costs (dataset load, first FLOP counts) paid before the case
    out = sampling_case(clients, fraction, 6, rounds)
    out["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out))


def sampling(rounds: int, pythons: list[tuple[str, str]]) -> None:
    """10,000 clients at 1 % a round next to 100 clients at 100 %: 100 clients x 6 samples train each round.

    Each case runs in a process of its own, for every interpreter in ``pythons`` (e.g. a baseline's venv),
    so peak RSS and the wall from process start to the first round are its own."""
    import json
    import subprocess

    me = os.path.abspath(__file__)
    load0 = os.getloadavg()
    res = {}
    for label, py in pythons:
        for clients, frac in ((100, 1.0), (10_000, 0.01)):
            t0 = time.time()
            proc = subprocess.run([py, me, "--child-sampling", str(clients), str(frac), str(rounds)],
                                  stdout=subprocess.PIPE, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["start_to_first"] = r["first_round_at"] - t0
            res[(label, clients)] = r
            print(f"  {label}: {clients} clients at {frac}: set-up {r['setup']:.3f} s, rounds "
                  f"{[round(x, 3) for x in r['rounds']]}, peak RSS {r['maxrss'] / 2**20:.0f} MiB", flush=True)
    load1 = os.getloadavg()
    print(f"\nFedAvg MLP, 6 samples per client, {rounds} rounds; load average before "
          f"{' '.join(f'{v:.2f}' for v in load0)}, after {' '.join(f'{v:.2f}' for v in load1)} on {os.cpu_count()} cores")
    print("set-up = setup() (data split, topology, plan, engine), as before; scenario = load_scenario (the "
          "expanded 10,000-node config), prelude = run() before round 1; start->round 1 = process start to round 1 "
          "(imports and a 10-client warm-up included)")
    print("CPU s: this process's CPU time (one torch thread), steadier than the wall on a busy machine")
    print("| version | clients | per round | scenario s | set-up s | set-up CPU s | prelude s | round s (median) | "
          "round CPU s | after last s | start->round 1 s | peak RSS MiB | set-up / 100 (wall, CPU) | "
          "round / 100 (wall, CPU) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, _ in pythons:
        b = res[(label, 100)]
        s100, c100 = b["setup"], b["setup_cpu"]
        r100, rc100 = statistics.median(b["rounds"]), statistics.median(b["rounds_cpu"])
        for clients, frac in ((100, 1.0), (10_000, 0.01)):
            r = res[(label, clients)]
            rm, rc = statistics.median(r["rounds"]), statistics.median(r["rounds_cpu"])
            print(f"| {label} | {clients} | {frac} | {r['scenario']:.3f} | {r['setup']:.3f} | {r['setup_cpu']:.3f} | "
                  f"{r['prelude']:.3f} | {rm:.3f} | {rc:.3f} | {r['after']:.3f} | {r['start_to_first']:.2f} | "
                  f"{r['maxrss'] / 2**20:.0f} | {r['setup'] / s100:.2f}, {r['setup_cpu'] / c100:.2f} | "
                  f"{rm / r100:.2f}, {rc / rc100:.2f} |")
    print("target: 10,000 at 1 % within 2x of 100 at 100 % (set-up and round)")


def entry() -> None:
    """``--child`` (one side of --side-by-side), ``--side-by-side``, ``--sampling``, or the cases (main)."""
    import sys

    if "--child" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--child", choices=["flexpl", "plain"])
        ap.add_argument("--sets", default=",".join(ISSUE_SETS))
        a = ap.parse_args()
        if a.child == "flexpl":
            _child_flexpl(a.sets.split(","))
        else:
            _child_plain(1000, 2, 10, 2)
    elif "--side-by-side" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--side-by-side", action="store_true")
        ap.add_argument("--pythons", default=f"this={sys.executable}",
                        help="label=interpreter,... : FlexPL installs to compare (e.g. a baseline's venv)")
        ap.add_argument("--vectorized", default="this",
                        help="labels (comma-separated) that also get an engine.executor=vectorized row")
        a = ap.parse_args()
        side_by_side([tuple(p.split("=", 1)) for p in a.pythons.split(",")], set(a.vectorized.split(",")))
    elif "--child-sampling" in sys.argv:
        _, _, clients, frac, rounds = sys.argv[:5]
        _child_sampling(int(clients), float(frac), int(rounds))
    elif "--sampling" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--sampling", action="store_true")
        ap.add_argument("--rounds", type=int, default=3)
        ap.add_argument("--pythons", default=f"this={sys.executable}",
                        help="label=interpreter,... : FlexPL installs to compare (e.g. a baseline's venv)")
        a = ap.parse_args()
        sampling(a.rounds, [tuple(p.split("=", 1)) for p in a.pythons.split(",")])
    else:
        main()


if __name__ == "__main__":
    entry()
