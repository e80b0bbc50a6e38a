#!/usr/bin/env bash
# End-to-end reproduction. With no argument: the embedded mini dataset on a CPU laptop.
#   ./run_all.sh                       # mini data (generated once into work/mini), every stage that exists
#   ./run_all.sh --data DIR            # the real Kaggle files: DIR/train.bson DIR/test.bson [DIR/category_names.csv]
#   ./run_all.sh --work DIR            # where every stage writes (default: work/)
#   ./run_all.sh --preset tiny         # the seconds-long mini preset (tests use it)
#   ./run_all.sh --profile full        # the winners' full recipes (GPUs; used by the training stages)
#   ./run_all.sh --nproc N             # training/predicting stages under torchrun with N processes (default: one per GPU; gloo on CPU)
#   ./run_all.sh --protocol holdout    # kfold (the mini default) | holdout (the full default, as the winners: one model per recipe)
#   ./run_all.sh --holdout-fraction F  # the holdout's share when the 2nd team's 50k ids are not in the data (default 0.05)
#   ./run_all.sh --profile full --fast-dev-run   # every full recipe, a few steps at a small input: the wiring in minutes (work/fast_dev_run)
#   ./run_all.sh --from STAGE | --only STAGE | --force
#   ./run_all.sh --accept-lost-products   # write the submissions although the test index lost documents of a cut test.bson
#   ./run_all.sh --profile full --plan [--data DIR] [--gpus N]   # what the run costs (GPU-hours, disk, RAM), then exit: no stage runs
# A stage whose output is newer than every earlier stage's (and than its recipes) is skipped, so an
# interrupted run continues where it stopped; what a stage reuses inside is checked by content.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA="" WORK="" PRESET="default" PROFILE="mini" FROM="" ONLY="" FORCE=0 SEED=0 N_FOLDS="" NPROC="" PROTOCOL="" HOLDOUT_FRACTION="0.05" FAST_DEV=0
PLAN=0 GPUS="" ACCEPT_LOST=()  # --plan: python -m common.plan on --gpus N GPUs, no stage
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --data|--work|--preset|--profile|--from|--only|--seed|--n-folds|--nproc|--protocol|--holdout-fraction)
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
    --accept-lost-products) ACCEPT_LOST=(--accept-lost-products); shift ;;
    --plan) PLAN=1; shift ;;
    --gpus) [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "run_all.sh: --gpus takes a whole number" >&2; exit 2; }; GPUS="$2"; shift 2 ;;
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
  exec python -m common.plan "${PLAN_ARGS[@]}"
fi
STAGES=(data index folds stats dylan bestfitting convoluted ocr md5 stack report)
for s in "$FROM" "$ONLY"; do
  if [ -n "$s" ] && [[ ! " ${STAGES[*]} " =~ " $s " ]]; then
    echo "run_all.sh: unknown stage '$s' (stages: ${STAGES[*]})" >&2; exit 2
  fi
done

if [ -n "$DATA" ]; then
  TRAIN="$DATA/train.bson" TEST="$DATA/test.bson"
  CATEGORIES="$DATA/category_names.csv"; [ -f "$CATEGORIES" ] || CATEGORIES="$ROOT/common/resources/category_names.csv"
  for f in "$TRAIN" "$TEST"; do [ -f "$f" ] || { echo "run_all.sh: missing $f (put the Kaggle files in $DATA)" >&2; exit 2; }; done
else
  MINI="$WORK/mini"
  TRAIN="$MINI/train.bson" TEST="$MINI/test.bson" CATEGORIES="$MINI/category_names.csv"
fi
TEST_LABELS=()
[ -z "$DATA" ] && TEST_LABELS=(--test-labels "$MINI/test_labels.csv")

# training and predicting stages: --nproc N processes under torchrun, else one per GPU when several are visible
[ -n "$NPROC" ] || NPROC="$(python -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
if [ "$NPROC" -gt 1 ]; then LAUNCH=(torchrun --standalone --nproc_per_node="$NPROC"); else LAUNCH=(python); fi
DEV_FLAG=(); [ "$FAST_DEV" = 1 ] && DEV_FLAG=(--fast-dev-run)
# every recipe of the profile loaded, validated, its network built, its global batch split over the
# processes and its weight file found, before any stage runs (every problem named at once)
python -m common.preflight --profile "$PROFILE" --nproc "$((NPROC > 1 ? NPROC : 1))" "${DEV_FLAG[@]}"
train_solution() {  # train_solution SOLUTION: every recipe of the profile (each after those it requires), then the solution's blend
  "${LAUNCH[@]}" -m "solutions.$1.train" --profile "$PROFILE" --work "$WORK" "${DEV_FLAG[@]}" $(force_flag)
  python -m "solutions.$1.submit" --work "$WORK" --profile "$PROFILE" "${ACCEPT_LOST[@]}"
}

started=0
should_run() {  # should_run STAGE: honours --from / --only
  local stage="$1"
  if [ -n "$ONLY" ]; then [ "$stage" = "$ONLY" ]; return; fi
  [ -z "$FROM" ] || [ "$stage" = "$FROM" ] && started=1
  [ "$started" = 1 ]
}
declare -A WALL
# make's rule over the stage order: an output older than an earlier stage's output (or than the
# solution's recipe YAMLs) is stale and its stage reruns; inside, each stage checks what it reuses
# by content (folds, index, recipe: a changed one stops, naming it, unless --force)
NEWEST=0
mtime() { local t; t="$(stat -c %Y "$@" 2>/dev/null | sort -n | tail -1)"; echo "${t:-0}"; }
note_output() { local t; t="$(mtime "$@")"; [ "$t" -le "$NEWEST" ] || NEWEST="$t"; }
recipes_mtime() { if [ -d "$ROOT/solutions/$1/configs" ]; then mtime "$ROOT/solutions/$1/configs"/*.yaml; else echo 0; fi; }
run_stage() {  # run_stage NAME DONE_FILE CMD...: skip when DONE_FILE is newer than what came before (unless --force)
  local name="$1" done_file="$2"; shift 2
  should_run "$name" || { echo "== $name: not selected"; return 0; }
  local newest="$NEWEST" recipes; recipes="$(recipes_mtime "$name")"; [ "$recipes" -le "$newest" ] || newest="$recipes"
  if [ "$FORCE" = 0 ] && [ -n "$done_file" ] && [ -e "$done_file" ]; then
    if [ "$(mtime "$done_file")" -ge "$newest" ]; then
      echo "== $name: up to date ($done_file)"; WALL[$name]="skipped"; note_output "$done_file"; return 0
    fi
    echo "== $name: stale (an earlier stage's output or its recipes are newer than $done_file): rerun"
  fi
  echo "== $name"
  local t0=$SECONDS
  "$@"
  WALL[$name]="$((SECONDS - t0))s"
  echo "== $name: ${WALL[$name]}"
  [ -z "$done_file" ] || note_output "$done_file"
}
force_flag() { [ "$FORCE" = 1 ] && echo --force || true; }

if [ -z "$DATA" ]; then
  run_stage data "" python -m mini --work "$WORK" --out "$MINI" --preset "$PRESET" --seed "$SEED" $(force_flag)
  note_output "$MINI/mini.json"
fi
run_stage index "" python -m common.prepare --work "$WORK" --train "$TRAIN" --test "$TEST" --categories "$CATEGORIES" "${TEST_LABELS[@]}"
note_output "$WORK/index/train.json" "$WORK/index/test.json"
# always run: it leaves matching folds alone and stops when the work dir's folds were made otherwise
run_stage folds "" python -m common.folds --work "$WORK" --protocol "$PROTOCOL" --n-folds "$N_FOLDS" --holdout-fraction "$HOLDOUT_FRACTION" --seed "$SEED" $(force_flag)
note_output "$WORK/folds.json"
run_stage stats "$WORK/stats/test/stats.json" python -m common.stats --work "$WORK"

run_stage dylan "$WORK/preds/dylan/summary.json" train_solution dylan
run_stage bestfitting "$WORK/preds/bestfitting/summary.json" train_solution bestfitting
run_stage convoluted "$WORK/preds/convoluted/summary.json" train_solution convoluted
run_stage ocr "$WORK/preds/ocr/summary.json" python -m ocr.run --work "$WORK"
run_stage md5 "$WORK/preds/md5/summary.json" python -m md5.run --work "$WORK" "${ACCEPT_LOST[@]}"
run_stage stack "$WORK/preds/stack/summary.json" python -m ensembling.stack --work "$WORK" "${ACCEPT_LOST[@]}"
run_stage report "$WORK/report/index.html" python -m ensembling.report --work "$WORK"

echo
echo "Wall time per stage:"
for s in "${STAGES[@]}"; do [ -n "${WALL[$s]:-}" ] && printf '  %-12s %s\n' "$s" "${WALL[$s]}"; done
echo "Final submission: $WORK/submissions/stack.csv.gz    report: $WORK/report/index.html"
echo "Outputs under $WORK"
