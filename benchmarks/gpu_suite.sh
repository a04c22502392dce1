#!/usr/bin/env bash
# The prepared GPU check: one run, at most 8 minutes on one H200, of the measurements docs/performance.md records.
# Every stage has a time budget (seconds, env BUDGET_<stage>); a stage that fails or runs out of time costs its own
# rows only, and each stage ends with a one-line summary. Results: OUT_DIR/summary.md (Markdown, for
# docs/performance.md), the JSON rows (env.json, smoke.jsonl, pretrain.jsonl, rerank.jsonl), one log per stage
# and stages.tsv (stage, status, seconds, budget).
#
#   bash benchmarks/gpu_suite.sh OUT_DIR [--dry-run] [stage ...]
#   DRY_RUN=1 PYTHON=.venv/bin/python bash benchmarks/gpu_suite.sh /tmp/suite     # the same stages on this CPU
#
# stages (default: env smoke pretrain rerank, in this order; GPU budgets in brackets: 470 s, plus about 10 s of
# set-up and report, fit the 8 minutes):
#   env       [25]  versions, GPU, bf16 matmul rate (benchmarks/env_report.py; the MFU denominator)
#   smoke     [110] every task script for 5 steps on CUDA in bf16 on generated data, 4 at a time, 90 s each at most
#                   (benchmarks/smoke_tasks.py): pass / fail per task with the error's last lines
#   pretrain  [265] ours (benchmarks/pretrain_throughput.py) and the official step (benchmarks/official_step.py)
#                   at base / 224 px / batch 128 (image-text step), bf16: eager, torch.compile, CUDA graphs
#                   (compile mode reduce-overhead), each in its own process, eager 45 s / compiled 100 s at most
#                   (compile warm-up included), 2 (eager) or 3 (compiled) warm-up + 5 timed steps; pairs/s, FLOPs,
#                   MFU, peak GiB (benchmarks/pretrain_compare.py; PRETRAIN_PLAN orders the six configurations,
#                   PRETRAIN_MODE=image|mixed); configurations that no longer fit the budget are skipped, in order
#   rerank    [70]  retrieval evaluation at COCO-5k size: base at 384 px, 5,000 images / 25,000 captions, k = 80,
#                   24 ITM batches per direction, the per-pair loop and score check on 4 queries per direction, and
#                   the projected minutes on this GPU (benchmarks/retrieval_rerank.py)
#   demo      [300] (not by default) the README demo pretraining on GPU, DEMO_STEPS (3000) steps + its zero-shot
#                   eval; DEMO_NAME names its files, DEMO_ARGS adds "--override key=value" words
#   deepspeed [300] (not by default) the demo with engine=deepspeed (ZeRO-2) for DS_STEPS (200) steps, then its
#                   second half again from the half-way checkpoint; skipped with a line when deepspeed is not
#                   installed (it is not on the lent GPU machines)
#
# --dry-run (or DRY_RUN=1): the same stages on the CPU, tiny preset, tiny batches, 1-2 steps, torch.compile with
# the eager backend (tracing only), the official model shrunk (--shrink); tests/test_gpu_suite.py runs it.
#
# On the GPU machine only the repository and carried ignored folders exist: carry bench_official (the official
# code, with a copy of the harness ../shared/bench/official_pretrain_step.py in it: this script makes that copy
# where ../shared is present) and .whl (wheels of webdataset and braceexpand, which reading .tar shards needs and the
# machine lacks; this script installs them into /tmp when they are missing). Nothing is downloaded there.
set -uo pipefail
out=${1:?usage: gpu_suite.sh OUT_DIR [--dry-run] [stage ...]}
shift
dry=${DRY_RUN:-0}
args=()
for a in "$@"; do
  if [ "$a" = --dry-run ]; then dry=1; else args+=("$a"); fi
done
stages=${args[*]:-env smoke pretrain rerank}
py=${PYTHON:-python3}
case $py in */*) py=$(cd "$(dirname "$py")" && pwd)/$(basename "$py") ;; esac  # a path stays valid after the cd
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
: > "$out/stages.tsv"
suite_start=$(date +%s)

if [ "$dry" = 1 ]; then
  dev=cpu demo_steps=${DEMO_STEPS:-20} ds_steps=${DS_STEPS:-20}
  declare -A budget=([env]=60 [smoke]=150 [pretrain]=200 [rerank]=90 [demo]=120 [deepspeed]=120)
else
  dev=cuda demo_steps=${DEMO_STEPS:-3000} ds_steps=${DS_STEPS:-200}
  declare -A budget=([env]=25 [smoke]=110 [pretrain]=265 [rerank]=70 [demo]=300 [deepspeed]=300)
fi
limit() { local v="BUDGET_$1"; echo "${!v:-${budget[$1]:-120}}"; }

# the official harness beside the official code (it travels with bench_official)
if [ -d bench_official ] && [ ! -f bench_official/official_pretrain_step.py ] \
   && [ -f ../shared/bench/official_pretrain_step.py ]; then
  cp ../shared/bench/official_pretrain_step.py bench_official/
fi
# packages the task scripts import that the GPU machine lacks, from carried wheels
if ! "$py" -c "import webdataset" 2>/dev/null; then
  if compgen -G ".whl/*.whl" > /dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/x2vlm_site \
      .whl/*.whl && export PYTHONPATH=/tmp/x2vlm_site${PYTHONPATH:+:$PYTHONPATH}
    echo "installed from .whl: $(printf '%s ' .whl/*.whl)"
  else
    echo "webdataset is missing and no .whl folder was carried: only paths that read .tar shards need it"
  fi
fi

# run_stage NAME LOG CMD...: the command under the stage's budget, its output in LOG, one summary line
run_stage() {
  local name=$1 log=$2 b t0 rc status line
  shift 2
  b=$(limit "$name")
  t0=$(date +%s)
  echo "=== $name (budget ${b} s, $(date +%T))"
  timeout -k 10 "$b" "$@" 2>&1 | tr '\r' '\n' | grep --line-buffered -v '^train:' | tee "$log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" = 0 ]; then status=ok
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status=timeout
  else status="fail(rc $rc)"
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" "$b" >> "$out/stages.tsv"
  line=$(grep -E "^(env: device|smoke summary|pretrain summary|projection|deepspeed summary|demo summary)" "$log" \
         | tail -1)
  echo "=== $name: $status in $(( $(date +%s) - t0 )) s of ${b} s | ${line:-no summary line}"
}

for stage in $stages; do
  rm -f "$out/$stage.jsonl" "$out/$stage.json"  # a rerun into the same folder starts its rows afresh
  case $stage in
    env)
      command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
        --format=csv,noheader
      run_stage env "$out/env.log" "$py" benchmarks/env_report.py --device "$dev" --out "$out/env.json"
      ;;
    smoke)
      if [ "$dry" = 1 ]; then
        s=(--device cpu --precision "${SMOKE_PRECISION:-fp32}" --steps 1 --jobs 2 --timeout 120)
      else
        s=(--device cuda --precision "${SMOKE_PRECISION:-bf16}" --steps 5 --jobs 4 --timeout 90)
      fi
      run_stage smoke "$out/smoke.log" "$py" benchmarks/smoke_tasks.py "${s[@]}" --budget $(( $(limit smoke) - 8 )) \
        --out "$out/smoke.jsonl"
      ;;
    pretrain)
      b=$(limit pretrain)
      plan=(--plan "${PRETRAIN_PLAN:-ours:off,official:off,ours:default,ours:reduce-overhead,official:default,official:reduce-overhead}")
      if [ "$dry" = 1 ]; then
        s=(--device cpu --preset tiny --batch 2 --precision fp32 --warmup 1 --compile-warmup 2 --steps 1
           --compile-backend eager --official-shrink --eager-timeout 60 --compile-timeout 60)
      else
        s=(--device cuda --preset x2vlm_base --batch 128 --precision bf16 --warmup 2 --compile-warmup 3 --steps 5
           --eager-timeout 45 --compile-timeout 100)
      fi
      run_stage pretrain "$out/pretrain.log" "$py" benchmarks/pretrain_compare.py "${s[@]}" "${plan[@]}" \
        --mode "${PRETRAIN_MODE:-image}" --budget $(( b - 10 )) --env-json "$out/env.json" --out "$out/pretrain.jsonl"
      ;;
    rerank)
      if [ "$dry" = 1 ]; then
        s=(--device cpu --precision fp32 --preset tiny --images 200 --k 16 --sample-batches 4 --repeated-batches 2
           --check-queries 2)
      else
        s=(--device cuda --precision bf16 --preset x2vlm_base --image-res 384 --images 5000 --k 80
           --sample-batches 24 --repeated-batches 8 --check-queries 4)
      fi
      run_stage rerank "$out/rerank.log" "$py" benchmarks/retrieval_rerank.py "${s[@]}" --out "$out/rerank.jsonl"
      ;;
    demo)
      [ -f data/synthetic/vocab.txt ] || "$py" -m dataset.synthetic data/synthetic > /dev/null
      name=${DEMO_NAME:-demo}
      prec=bf16; [ "$dry" = 1 ] && prec=fp32
      # shellcheck disable=SC2086  # DEMO_ARGS: extra "--override key=value" words
      run_stage demo "$out/$name.log" "$py" run.py --task pretrain --dist 1 --config configs/pretrain/demo.yaml \
        --output_dir "$out/$name" ${DEMO_ARGS:-} --device "$dev" --override train.precision=$prec \
        --override data.num_workers=6 --override "train.steps=$demo_steps" \
        --override train.ckpt_every=1000 --override train.log_every=250
      cp "$out/$name/log.jsonl" "$out/${name}_log.jsonl" 2>/dev/null
      cp "$out/$name/zero_shot.json" "$out/${name}_zero_shot.json" 2>/dev/null &&
        echo "demo summary: zero-shot $(tr -d '\n' < "$out/${name}_zero_shot.json" | cut -c1-300)"
      rm -rf "${out:?}/$name"
      ;;
    deepspeed)
      if ! "$py" -c "import deepspeed" 2>/dev/null; then
        echo "=== deepspeed: skipped, deepspeed is not installed (pip install deepspeed; not on the lent GPU machines)"
        printf 'deepspeed\tskipped\t0\t%s\n' "$(limit deepspeed)" >> "$out/stages.tsv"
        continue
      fi
      [ -f data/synthetic/vocab.txt ] || "$py" -m dataset.synthetic data/synthetic > /dev/null
      ds=(--task pretrain --dist 1 --config configs/pretrain/demo.yaml --device "$dev"
          --override train.engine=deepspeed --override train.precision=bf16
          --override "train.deepspeed={zero_optimization: {stage: 2}}" --override "train.steps=$ds_steps"
          --override "train.ckpt_every=$(( ds_steps / 2 ))" --override train.log_every=10 --override data.num_workers=4
          --override "eval.retrieval_file=[]" --override "eval.grounding_file=[]")
      # DS_STEPS (200) steps straight, then the second half again from the half-way checkpoint in a second
      # folder: the logged losses of the second half must agree
      half=$(printf 'step_%08d.pt' $(( ds_steps / 2 )))
      run_stage deepspeed "$out/deepspeed.log" bash -c "
        $py run.py ${ds[*]@Q} --output_dir $out/ds_a &&
        $py run.py ${ds[*]@Q} --output_dir $out/ds_b --resume $out/ds_a/checkpoints/$half &&
        $py -c '
import json, sys
logs = [{r[\"step\"]: r for r in map(json.loads, open(p)) if \"loss\" in r} for p in sys.argv[1:]]
same = [s for s in sorted(set(logs[0]) & set(logs[1])) if logs[0][s][\"loss\"] == logs[1][s][\"loss\"]]
print(\"deepspeed summary:\", len(same), \"of\", len(set(logs[0]) & set(logs[1])), \"shared steps log the same loss\")
' $out/ds_a/log.jsonl $out/ds_b/log.jsonl"
      cp "$out/ds_a/log.jsonl" "$out/deepspeed_log.jsonl" 2>/dev/null
      rm -rf "${out:?}/ds_a" "${out:?}/ds_b"
      ;;
    *) echo "unknown stage '$stage' (env smoke pretrain rerank demo deepspeed)"; exit 2 ;;
  esac
done
total=$(( $(date +%s) - suite_start ))
$py benchmarks/gpu_suite_report.py "$out" > /dev/null
echo "=== done in ${total} s ($(date +%T)); results: $out/summary.md (Markdown for docs/performance.md), JSON rows" \
     "$out/{env.json,smoke.jsonl,pretrain.jsonl,rerank.jsonl}, logs $out/*.log, stage times $out/stages.tsv"
[ "$dry" = 1 ] || [ "$total" -le 480 ] || echo "=== WARNING: the suite took ${total} s, over its 480 s (8 min) budget"
