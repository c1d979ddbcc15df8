"""Cost to a target accuracy on edge-fmnist: fl, sfl, fpl and FPL with fronts synced at the cloud.

    python benchmarks/cost_to_target.py --out results/cost-to-target --seeds 0 \
        --set data.max_train=6000 --set training.rounds=6 --target 0.7 --target 0.75

Runs every variant (and seed) through the same ``flexpl.studies.run_one.run_one`` as ``flexpl run``,
writes ``comparison.csv`` (one row per variant and seed, with the ``*_to_A`` columns of
``flexpl.costs.targets``), builds ``report.html`` when there is one seed, and prints the table:
per target, mean over the seeds that reached it and how many did.
"""

from __future__ import annotations

import argparse
import math

# FPL whose fronts (stage 1, one per device) and trunks (stage 2, one per edge server) are
# both averaged at the cloud every round (see docs/background.md: "synced-front FPL").
FPL_SYNCED = ("plan={name: fpl-synced, stages: ["
              "{replication: per_node, host: own, sync: {kind: fedavg, at: cloud}}, "
              "{replication: per_group, host: own, sync: {kind: fedavg, at: cloud}}]}")
VARIANTS = {"fl": ("fl", []), "sfl": ("sfl", []), "fpl": ("fpl", []), "fpl-synced": ("fpl", [FPL_SYNCED])}


def main() -> None:
    """Run the variants, write comparison.csv, print the cost-to-target table."""
    from flexpl.costs.targets import COSTS, target_columns, target_key
    from flexpl.io.results import prepare_out_dir, write_csv
    from flexpl.studies.run_one import run_one

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default="edge-fmnist")
    p.add_argument("--alpha", type=float, default=0.1, help="Dirichlet alpha of the label skew")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--target", action="append", type=float, default=None)
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default="results/cost-to-target")
    a = p.parse_args()
    targets = a.target or [0.7, 0.75]
    seeds = [int(s) for s in a.seeds.split(",")]
    out = prepare_out_dir(a.out)
    base = ["data.partition.kind=dirichlet", f"data.partition.alpha={a.alpha}", *a.set,
            "evaluation.targets=[" + ",".join(str(t) for t in targets) + "]"]
    rows = []
    for seed in seeds:
        for name in a.variants.split(","):
            strategy, extra = VARIANTS[name]
            folder = out / name if len(seeds) == 1 else out / f"seed{seed}" / name
            s = run_one(a.scenario, [*base, *extra], strategy, seed, folder, quiet=True, label=name,
                        show_data=False)
            row = {"variant": name, "seed": seed, "final_accuracy": s["final_accuracy"],
                   "bytes_total": s["bytes_total"], "energy_j_total": s["energy_j_total"],
                   "sim_time_s": s["sim_time_s"], **target_columns(s["to_target"])}
            rows.append(row)
            print(f"seed {seed} {name}: final {s['final_accuracy']:.4f}  " + "  ".join(
                f"{k}: round {v['round']} bytes {v['bytes']:.3e}" if v else f"{k}: not reached"
                for k, v in s["to_target"].items()), flush=True)
    write_csv(out / "comparison.csv", [{"strategy": r["variant"], **r} for r in rows])
    if len(seeds) == 1:
        from flexpl.report.html import build_report

        print(f"report: {build_report(out)}")
    print(f"\n{a.scenario}, alpha {a.alpha}, {' '.join(a.set)}, seeds {a.seeds}")
    head = ["variant", "final_acc"] + [f"{c}_to_{target_key(t)}" for t in sorted(targets)
                                        for c in ("round", *COSTS)] + [f"reached_{target_key(t)}" for t in targets]
    print(" | ".join(head))
    for name in a.variants.split(","):
        mine = [r for r in rows if r["variant"] == name]
        cells = [name, f"{sum(r['final_accuracy'] for r in mine) / len(mine):.4f}"]
        for t in sorted(targets):
            for c in ("round", *COSTS):
                vals = [r[f"{c}_to_{target_key(t)}"] for r in mine if r[f"{c}_to_{target_key(t)}"] is not None]
                cells.append(f"{sum(vals) / len(vals):.4g}" if vals else "-")
        cells += [f"{sum(r[f'reached_{target_key(t)}'] for r in mine)}/{len(mine)}" for t in targets]
        print(" | ".join(cells))
    if any(math.isnan(r["final_accuracy"]) for r in rows):
        print("warning: a run ended without an accuracy")


if __name__ == "__main__":
    main()
