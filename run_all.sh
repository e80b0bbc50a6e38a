#!/usr/bin/env bash
# End-to-end reproduction. With no argument: the embedded mini dataset on a CPU laptop.
#   ./run_all.sh                       # mini data (generated once into work/mini), every stage that exists
#   ./run_all.sh --data DIR            # the real Kaggle files: DIR/train.bson DIR/test.bson [DIR/category_names.csv]
#   ./run_all.sh --work DIR            # where every stage writes (default: work/)
#   ./run_all.sh --preset tiny|default|dev   # the mini dataset's size (tiny: seconds, the tests' one; dev: 2,000 products)
#   ./run_all.sh --seed N | --n-folds K      # the mini data's and the folds' seed (0); k-fold folds (3 mini, 5 full)
#   ./run_all.sh --profile full        # the winners' full recipes (GPUs; used by the training stages)
#   ./run_all.sh --nproc N             # recipes one after another, each under torchrun with N processes (default: one per GPU; gloo on CPU)
#   ./run_all.sh --gpus-per-recipe G --scheduler local[:N]   # every ready recipe at once, each on its own G GPUs (dask LocalCluster, N GPUs)
#   ./run_all.sh --gpus-per-recipe G --scheduler tcp://HOST:8786   # on the workers of `dask scheduler` (`dask worker ... --resources GPU=N`)
#   ./run_all.sh ... --progress-s S    # under a scheduler: a line per running recipe every S seconds (60)
#   ./run_all.sh --protocol holdout    # kfold (the mini default) | holdout (the full default, as the winners: one model per recipe)
#   ./run_all.sh --holdout-fraction F  # the holdout's share when the 2nd team's 50k ids are not in the data (default 0.05)
#   ./run_all.sh --profile full --fast-dev-run   # every full recipe, a few steps at a small input: the wiring in minutes (work/fast_dev_run)
#   ./run_all.sh --from STAGE | --only STAGE|NODE | --force   # stages: python -m common.pipeline --list
#   ./run_all.sh --compile               # every recipe's training through torch.compile (as `compile: true` in each recipe)
#   ./run_all.sh --accept-lost-products   # write the submissions although the test index lost documents of a cut test.bson
#   ./run_all.sh --profile full --plan [--data DIR] [--gpus N] [--gpus-per-recipe G] [--machines M] [--speeds recorded]
#                                      # what the run costs (GPU-hours, its schedule's wall-hours, disk, RAM), then exit: no stage runs
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
