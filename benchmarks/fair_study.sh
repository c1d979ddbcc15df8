#!/usr/bin/env bash
# Fair comparison on edge-fmnist (issue 13): tune each strategy's learning rate on validation
# data at Dirichlet alpha 0.1, then run every strategy with its tuned optimizer for ROUNDS
# rounds and SEEDS seeds, at alpha 0.1 and IID, and print the table (benchmarks/fair_table.py).
#
#   bash benchmarks/fair_study.sh                                   # full size: 60k/10k, 20 rounds, 3 seeds
#   SLICE="data.max_train=1000 data.max_test=1000" nice -n 15 bash benchmarks/fair_study.sh
#
# Resumable: rerunning the same command reuses every finished run (tune cells and seeds).
# Every tune runs first; then seeds run one at a time over all strategies and partitions (0,
# then 0,1, then 0,1,2), so a study cut short still has every strategy at both partitions.
# The test set is never used to choose: flexpl tune reads only final_val_accuracy (10% of each
# device's samples held out). IID reuses the values tuned at alpha 0.1 unless TUNE_IID=1.
set -euo pipefail
FLEXPL=${FLEXPL:-flexpl}
PY=${PY:-python}
OUT=${OUT:-results/fair-study}
SLICE=${SLICE:-}                       # --set items (space separated); empty: the full data set
TUNE_SLICE=${TUNE_SLICE:-$SLICE}       # the tune's (its test set is never read: a smaller max_test is fine)
ROUNDS=${ROUNDS:-20}
SEEDS=${SEEDS:-0,1,2}
TUNE_ROUNDS=${TUNE_ROUNDS:-4}
TUNE_SEEDS=${TUNE_SEEDS:-0,1}
LRS=${LRS:-0.01,0.02,0.05}
TUNE_STRATS=${TUNE_STRATS:-centralized,fl,sl,sfl,mp,fpl,fpl-sync,fpl-group}
PARTITIONS=${PARTITIONS:-alpha0.1 iid}
TUNE_IID=${TUNE_IID:-0}
ORDER=${ORDER:-seed}                   # seed: seed 0 at every partition, then seed 1...; partition: one at a time
# one torch thread per process: on a busy 2-core machine two intra-op threads ran a CNN step ~4x slower
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

slice=(); for s in $SLICE; do slice+=(--set "$s"); done
tslice=(); for s in $TUNE_SLICE; do tslice+=(--set "$s"); done

tune() {  # tune <folder> <partition --set items...>
    local folder=$1; shift
    $FLEXPL tune edge-fmnist --strategies "$TUNE_STRATS" --grid "training.optimizer.lr=$LRS" \
        --seeds "$TUNE_SEEDS" "$@" "${tslice[@]}" --set "training.rounds=$TUNE_ROUNDS" \
        --jobs 1 --quiet --out "$OUT/$folder"
}

tune tune-alpha0.1 --set data.partition.alpha=0.1
# per partition: its --set items, tuned values (--set items) and strategies; every tune runs first
declare -A psets tsets strats_of
for part in $PARTITIONS; do
    case $part in
        alpha0.1) pset=(--set data.partition.alpha=0.1); tuned=tune-alpha0.1 ;;
        iid) pset=(--set data.partition.kind=iid); tuned=tune-alpha0.1
             if [ "$TUNE_IID" = 1 ]; then tune tune-iid "${pset[@]}"; tuned=tune-iid; fi ;;
        *) echo "PARTITIONS: unknown '$part' (alpha0.1, iid)" >&2; exit 2 ;;
    esac
    # the tuned values as --set items, and the FPL variant with the best tuned validation accuracy
    mapfile -t tset < <($PY -c 'import sys; from flexpl.studies.tune import tuned_sets
print("\n".join(i for t in tuned_sets(sys.argv[1]) for i in ("--set", t)))' "$OUT/$tuned/tuned.yaml")
    best=$($PY -c 'import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["chosen"] == "True" and r["strategy"] in ("fpl-sync", "fpl-group")]
print(max(rows, key=lambda r: float(r["val_accuracy_mean"]))["strategy"] if rows else "fpl-sync")' "$OUT/$tuned/tune.csv")
    psets[$part]="${pset[*]}"; tsets[$part]="${tset[*]}"
    strats_of[$part]=${STRATS:-centralized,fl,sl,sfl,mp,fpl,$best}
done
# seed by seed (0, then 0,1, then 0,1,2), every partition at each: a study cut short is balanced;
# ORDER=partition runs every seed of the first partition before the next (PARTITIONS="alpha0.1 iid":
# alpha 0.1 with all its seeds first)
steps=()
prefix=""
for k in ${SEEDS//,/ }; do
    prefix=${prefix:+$prefix,}$k
    for part in $PARTITIONS; do steps+=("$part:$prefix"); done
done
if [ "$ORDER" = partition ]; then
    ordered=()
    for part in $PARTITIONS; do
        for st in "${steps[@]}"; do if [ "${st%%:*}" = "$part" ]; then ordered+=("$st"); fi; done
    done
    steps=("${ordered[@]}")
elif [ "$ORDER" != seed ]; then echo "ORDER: unknown '$ORDER' (seed, partition)" >&2; exit 2; fi
for st in "${steps[@]}"; do
    part=${st%%:*}; prefix=${st#*:}
    read -r -a pset <<< "${psets[$part]}"; read -r -a tset <<< "${tsets[$part]}"
    $FLEXPL sweep edge-fmnist --grid "strategy=${strats_of[$part]}" --seeds "$prefix" "${pset[@]}" "${slice[@]}" \
        --set "training.rounds=$ROUNDS" "${tset[@]}" --jobs 1 --quiet --out "$OUT/$part"
    $PY "$(dirname "$0")/fair_table.py" "$OUT/$part" || true
done
