#!/usr/bin/env bash
# End-to-end reproduction. With no argument: the embedded mini dataset on a CPU laptop, every stage.
# Usage: ./run_all.sh [OPTION ...]       (-h, --help: this text)
# What and where:
#   --data DIR               the real Kaggle files: DIR/train.bson DIR/test.bson [DIR/category_names.csv]
#                            (default: the mini dataset, generated once into <work>/mini)
#   --work DIR               where every stage writes (default: work/; work/fast_dev_run with --fast-dev-run)
#   --profile mini|full      the recipes the training stages run (default: mini; full: the winners' recipes, GPUs)
#   --preset tiny|default|dev   the mini dataset's size (default: default; tiny: seconds, the tests' one;
#                            dev: 2,000 products; mini/plan.py PRESETS)
#   --seed N                 the mini data's and the folds' seed (default: 0)
#   --n-folds K              k-fold folds (default: 3 on the mini profile, 5 on full)
#   --protocol kfold|holdout   kfold (the mini default) | holdout (the full default, as the winners: one model per recipe)
#   --holdout-fraction F     the holdout's share when the 2nd team's 50k ids are not in the data (default: 0.05)
# Which nodes (stages: python -m common.pipeline --list):
#   --from STAGE             this stage and every later one
#   --only STAGE|NODE        this stage (or one recipe's node) alone
#   --force                  rerun every selected node (and retrain a fold made by another recipe or from other data)
# How the recipes train:
#   --nproc N                recipes one after another, each under torchrun with N processes
#                            (default: one per GPU; gloo on a CPU)
#   --gpus-per-recipe G      every ready recipe at once, each on its own G GPUs, through --scheduler
#   --scheduler local|local:N|tcp://HOST:PORT|tls://HOST:PORT
#                            the dask scheduler: a LocalCluster over N GPUs (or N CPU slots), or the workers of
#                            `dask scheduler` (`dask worker ... --resources GPU=N`)
#   --progress-s S           under a scheduler: a line per running recipe every S seconds (default: 60)
#   --fast-dev-run           every recipe a few steps at a small input: the wiring in minutes (with --profile full:
#                            every full recipe; into work/fast_dev_run unless --work)
#   --compile                every recipe's training through torch.compile (as `compile: true` in each recipe)
#   --accept-lost-products   write the submissions although the test index lost documents of a cut test.bson
# What it costs, then exit (python -m common.plan; no stage runs):
#   --plan                   GPU-hours, the schedule's wall-hours, disk, RAM of this run (with --profile, --data,
#                            --protocol, --n-folds, --holdout-fraction, --gpus-per-recipe as above)
#   --gpus N                 with --plan: GPUs per machine (default: 1)
#   --machines M             with --plan: machines alike, each with --gpus GPUs (default: 1)
#   --speeds estimated|recorded   with --plan: estimated (timm's AMP tables scaled to an H100, the default)
#                            | recorded (the 3rd place's 2017 speeds)
# Examples:
#   ./run_all.sh --profile full --fast-dev-run                  # on a new machine, first
#   ./run_all.sh --profile full --plan --gpus 8
#   ./run_all.sh --data DIR --work /fast/disk/work --profile full --gpus-per-recipe 1 --scheduler local:8
# A node (a stage or a recipe) whose output is newer than the outputs of the nodes it needs (and
# than its recipe) is skipped, so an interrupted run continues where it stopped; what a stage
# reuses inside is checked by content. Logs: <work>/logs/<node>.log.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA="" WORK="" PRESET="default" PROFILE="mini" FROM="" ONLY="" FORCE=0 SEED=0 N_FOLDS="" NPROC="" PROTOCOL="" HOLDOUT_FRACTION="0.05" FAST_DEV=0
PLAN=0 GPUS="" ACCEPT_LOST=() GPUS_PER_RECIPE="" SCHEDULER="" MACHINES="" PROGRESS_S=60 SPEEDS="" COMPILE=0  # --plan: python -m common.plan on --gpus N GPUs, no stage
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --data|--work|--preset|--profile|--from|--only|--seed|--n-folds|--nproc|--protocol|--holdout-fraction|--scheduler)
      [ $# -ge 2 ] && [ -n "$2" ] || { echo "run_all.sh: $1 needs a value" >&2; exit 2; } ;;
  esac
  case "$1" in
    --data) [ -d "${2:-}" ] || { echo "run_all.sh: --data ${2:-}: no such folder (it must hold train.bson and test.bson)" >&2; exit 2; }
            DATA="$(cd "$2" && pwd)"; shift 2 ;;
    --work) mkdir -p "$2"; WORK="$(cd "$2" && pwd)"; shift 2 ;;
    --preset) PRESET="$2"; shift 2 ;;
    --profile) PROFILE="$2"; shift 2 ;;
    --from) FROM="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --force) FORCE=1; shift ;;
    --seed) SEED="$2"; shift 2 ;;
    --n-folds) N_FOLDS="$2"; shift 2 ;;
    --nproc) NPROC="$2"; shift 2 ;;
    --protocol) PROTOCOL="$2"; shift 2 ;;
    --holdout-fraction) HOLDOUT_FRACTION="$2"; shift 2 ;;
    --fast-dev-run) FAST_DEV=1; shift ;;
    --compile) COMPILE=1; shift ;;
    --accept-lost-products) ACCEPT_LOST=(--accept-lost-products); shift ;;
    --plan) PLAN=1; shift ;;
    --speeds) [[ "${2:-}" =~ ^(estimated|recorded)$ ]] || { echo "run_all.sh: --speeds takes estimated or recorded" >&2; exit 2; }; SPEEDS="$2"; shift 2 ;;
    --gpus) [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "run_all.sh: --gpus takes a whole number" >&2; exit 2; }; GPUS="$2"; shift 2 ;;
    --gpus-per-recipe) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "run_all.sh: --gpus-per-recipe takes a whole number of GPUs" >&2; exit 2; }
                       GPUS_PER_RECIPE="$2"; shift 2 ;;
    --progress-s) [[ "${2:-}" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "run_all.sh: --progress-s takes seconds" >&2; exit 2; }; PROGRESS_S="$2"; shift 2 ;;
    --machines) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "run_all.sh: --machines takes a whole number" >&2; exit 2; }; MACHINES="$2"; shift 2 ;;
    --scheduler) [[ "$2" =~ ^(local(:[1-9][0-9]*)?|tcp://.+|tls://.+)$ ]] || { echo "run_all.sh: --scheduler takes local, local:N or tcp://HOST:PORT" >&2; exit 2; }
                 SCHEDULER="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "run_all.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
case "$PROFILE" in mini|full) ;; *) echo "run_all.sh: --profile must be mini or full" >&2; exit 2 ;; esac
case "$PRESET" in tiny|default|dev) ;; *) echo "run_all.sh: --preset must be tiny, default or dev (mini/plan.py PRESETS)" >&2; exit 2 ;; esac
# the winners trained each model once and validated on a holdout; k-fold keeps the mini run's OOF on every product
[ -n "$PROTOCOL" ] || { [ "$PROFILE" = full ] && PROTOCOL=holdout || PROTOCOL=kfold; }
case "$PROTOCOL" in kfold|holdout) ;; *) echo "run_all.sh: --protocol must be kfold or holdout" >&2; exit 2 ;; esac
[[ "$HOLDOUT_FRACTION" =~ ^0?\.[0-9]+$ ]] || { echo "run_all.sh: --holdout-fraction takes a number between 0 and 1, not '$HOLDOUT_FRACTION'" >&2; exit 2; }
# a fast dev run's models are not a real run's: they never share a work dir unless asked
[ -n "$WORK" ] || { [ "$FAST_DEV" = 1 ] && WORK="$ROOT/work/fast_dev_run" || WORK="$ROOT/work"; }
mkdir -p "$WORK"
for v in "$SEED" "$N_FOLDS" "$NPROC"; do
  [[ -z "$v" || "$v" =~ ^[0-9]+$ ]] || { echo "run_all.sh: --seed, --n-folds and --nproc take a whole number, not '$v'" >&2; exit 2; }
done
# 3 folds keep the mini run within its CPU budget; 5 on the full profile (override with --n-folds)
[ -n "$N_FOLDS" ] || { [ "$PROFILE" = mini ] && N_FOLDS=3 || N_FOLDS=5; }
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
if [ "$PLAN" = 1 ]; then  # the plan of this run (common/plan.py): counts, GPU-hours, disk, RAM; trains nothing
  PLAN_ARGS=(--profile "$PROFILE" --work "$WORK" --protocol "$PROTOCOL" --n-folds "$N_FOLDS" --holdout-fraction "$HOLDOUT_FRACTION")
  [ -n "$DATA" ] && PLAN_ARGS+=(--data "$DATA")
  [ -n "$GPUS" ] && PLAN_ARGS+=(--gpus "$GPUS")
  [ -n "$GPUS_PER_RECIPE" ] && PLAN_ARGS+=(--gpus-per-recipe "$GPUS_PER_RECIPE")
  [ -n "$MACHINES" ] && PLAN_ARGS+=(--machines "$MACHINES")
  [ -n "$SPEEDS" ] && PLAN_ARGS+=(--speeds "$SPEEDS")
  exec python -m common.plan "${PLAN_ARGS[@]}" --build-index  # a data folder without an index: built here, one read of the files
fi
# the pipeline graph (common/pipeline.py) run by common/runner.py: every stage and recipe in
# dependency order, one after another or side by side on a dask scheduler
RUN_ARGS=(--work "$WORK" --profile "$PROFILE" --preset "$PRESET" --seed "$SEED" --n-folds "$N_FOLDS" --protocol "$PROTOCOL"
          --holdout-fraction "$HOLDOUT_FRACTION" --from-stage "$FROM" --only "$ONLY" --scheduler "$SCHEDULER" --progress-s "$PROGRESS_S")
[ -n "$DATA" ] && RUN_ARGS+=(--data "$DATA")
[ -n "$NPROC" ] && RUN_ARGS+=(--nproc "$NPROC")
[ -n "$GPUS_PER_RECIPE" ] && RUN_ARGS+=(--gpus-per-recipe "$GPUS_PER_RECIPE")
[ "$FORCE" = 1 ] && RUN_ARGS+=(--force)
[ "$FAST_DEV" = 1 ] && RUN_ARGS+=(--fast-dev-run)
[ "$COMPILE" = 1 ] && RUN_ARGS+=(--compile)
[ ${#ACCEPT_LOST[@]} -gt 0 ] && RUN_ARGS+=(--accept-lost-products)
exec python -m common.runner "${RUN_ARGS[@]}"
