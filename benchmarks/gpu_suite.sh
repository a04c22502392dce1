#!/usr/bin/env bash
# The GPU measurements recorded in docs/performance.md, stage by stage; each stage's log and JSON rows go
# to OUT_DIR. Each stage has a time limit (seconds, env STAGE_LIMIT_<stage>) so a slow one cannot eat the rest.
#
#   bash benchmarks/gpu_suite.sh OUT_DIR [stage ...]
#
# stages (default: all, in this order):
#   env        versions, GPU name, bf16 matmul rate (for MFU figures)
#   eager      pretraining step, base preset, 224 px, 128 pairs + 50 region images: fp32 vs bf16, no compile
#   compile    the same with torch.compile (fp32 eager baseline re-run for the ratios)
#   rerank     retrieval evaluation speed, base preset at 384 px, COCO-5k sized, k = 80
#   demo       the README demo pretraining on GPU (bf16, DDP engine, DEMO_STEPS steps) + its zero-shot eval;
#              DEMO_NAME names its files, DEMO_ARGS adds "--override key=value" words
#   deepspeed  the demo with engine=deepspeed (ZeRO-2, bf16), stopped and resumed
set -uo pipefail
out=${1:?usage: gpu_suite.sh OUT_DIR [stage ...]}
shift
stages=${*:-env eager compile rerank demo deepspeed}
py=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1

limit() { local v="STAGE_LIMIT_$1"; echo "${!v:-$2}"; }

for stage in $stages; do
  echo "=== $stage ($(date +%T))"
  case $stage in
    env)
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
      timeout "$(limit env 60)" $py - <<'EOF' 2>&1 | tee "$out/env.log"
import importlib, time, torch
for name in ("torch", "torchvision", "transformers", "timm", "deepspeed"):
    try:
        print(name, importlib.import_module(name).__version__)
    except ImportError as e:
        print(name, "missing:", e)
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
for _ in range(3): a @ b
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(10): a @ b
torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 10
print(f"bf16 matmul 8192^3: {2 * 8192**3 / dt / 1e12:.0f} TFLOP/s")
EOF
      ;;
    eager|compile)
      c=off; [ "$stage" = compile ] && c=on
      timeout "$(limit "$stage" 400)" $py benchmarks/pretrain_throughput.py --preset x2vlm_base --batch 128 \
        --device cuda --precision fp32,bf16 --compile "$c" --warmup 3 --steps 10 \
        --out "$out/pretrain_throughput.jsonl" 2>&1 | tee "$out/$stage.log"
      ;;
    rerank)
      timeout "$(limit rerank 240)" $py benchmarks/retrieval_rerank.py --preset x2vlm_base --image-res 384 \
        --k 80 --queries "${RERANK_QUERIES:-0}" --out "$out/rerank.jsonl" 2>&1 | tee "$out/rerank.log"
      ;;
    demo)
      [ -f data/synthetic/vocab.txt ] || $py -m dataset.synthetic data/synthetic > /dev/null
      name=${DEMO_NAME:-demo}
      # shellcheck disable=SC2086  # DEMO_ARGS: extra "--override key=value" words
      timeout "$(limit demo 300)" $py run.py --task pretrain --dist 1 --config configs/pretrain/demo.yaml \
        --output_dir "$out/$name" ${DEMO_ARGS:-} --override train.device=cuda --override train.precision=bf16 \
        --override data.num_workers=6 --override "train.steps=${DEMO_STEPS:-3000}" \
        --override train.ckpt_every=1000 --override train.log_every=250 2>&1 | tr '\r' '\n' \
        | grep -v '^train:' | tee "$out/$name.log"
      cp "$out/$name/log.jsonl" "$out/${name}_log.jsonl" 2>/dev/null
      cp "$out/$name/zero_shot.json" "$out/${name}_zero_shot.json" 2>/dev/null
      rm -rf "${out:?}/$name"
      ;;
    deepspeed)
      [ -f data/synthetic/vocab.txt ] || $py -m dataset.synthetic data/synthetic > /dev/null
      ds=(--task pretrain --dist 1 --config configs/pretrain/demo.yaml
          --override train.device=cuda --override train.engine=deepspeed --override train.precision=bf16
          --override "train.deepspeed={zero_optimization: {stage: 2}}" --override train.steps=200
          --override train.ckpt_every=100 --override train.log_every=20 --override data.num_workers=4
          --override "eval.retrieval_file=[]" --override "eval.grounding_file=[]")
      # 200 steps straight, then steps 100..200 again from the step-100 checkpoint in a second folder:
      # the logged losses after step 100 must agree
      timeout "$(limit deepspeed 300)" bash -c "
        $py run.py ${ds[*]@Q} --output_dir $out/ds_a &&
        $py run.py ${ds[*]@Q} --output_dir $out/ds_b --resume $out/ds_a/checkpoints/step_00000100.pt" 2>&1 \
        | tr '\r' '\n' | grep -v '^train:' | tee "$out/deepspeed.log"
      $py -c '
import json, sys
logs = [{r["step"]: r for r in map(json.loads, open(p)) if "loss" in r} for p in sys.argv[1:]]
for s in sorted(set(logs[0]) & set(logs[1])):
    print("step", s, {k: (round(logs[0][s][k], 6), round(logs[1][s][k], 6)) for k in logs[0][s] if k.startswith("loss")})
' "$out/ds_a/log.jsonl" "$out/ds_b/log.jsonl" 2>&1 | tee -a "$out/deepspeed.log"
      cp "$out/ds_a/log.jsonl" "$out/deepspeed_log.jsonl" 2>/dev/null
      rm -rf "$out/ds_a" "$out/ds_b"
      ;;
    *) echo "unknown stage '$stage'"; exit 2 ;;
  esac
done
echo "=== done ($(date +%T))"
