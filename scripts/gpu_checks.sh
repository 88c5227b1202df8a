#!/usr/bin/env bash
# The project's GPU checks in one short job, each stage under its own time limit, every log also
# written to $OUT (default ./gpu-out). Run from the repository root on a CUDA machine:
#
#   bash scripts/gpu_checks.sh env model train          # issue 4's agreement check, issue 5's MFU bench
#   bash scripts/gpu_checks.sh eval gen tok e2e         # issue 6's eval bench, decoding, tokenizer threads, CLI train
#   bash scripts/gpu_checks.sh long                     # issue 14's long-context memory table
#   bash scripts/gpu_checks.sh ckpt                     # issue 13's checkpoint save/verify cost
#
# Stages:
#   env    nvidia-smi, python/torch/deepspeed/xformers versions
#   model  scripts/gpu_check_model.py (backends agree with fp32 eager; attention and step timings)
#   train  scripts/bench_train.py: DeepSpeed ZeRO-2 bf16 on an 8-layer Baichuan-7B slice, seq 4096, mb 2,
#          sdpa/xformers x chunked CE, then sdpa plain CE with and without DeepSpeed
#   eval   scripts/bench_eval.py: MMLU 5-shot, upstream loop vs batched vs batched + prefix cache
#   gen    scripts/bench_generate.py: decoding tokens/s with and without cuDNN attention
#   tok    scripts/bench_tokenizer_threads.py on this machine's cores (2, 4, 8, 16 threads)
#   e2e    `baichuan tokenize` the eval data with Baichuan-7B's model, then `baichuan train` (deepspeed
#          launcher, 1 GPU, bf16, 7B shape with 8 layers, no checkpoint) for a few steps
#   long   scripts/bench_long_context.py: peak GPU memory of one training micro-batch (fwd + chunked CE +
#          bwd, batch 1, bf16, sdpa, yarn:8 over a 4096 window) and of a prefill, 8-layer 7B slice at
#          4k/8k/16k/32k, without and with activation checkpointing (docs/model.md, long context)
#   ckpt   scripts/bench_checkpoint.py: save time (DeepSpeed files, model/ folder, sha256 manifest), verify
#          time and size of one checkpoint of the 8-layer 7B slice (bf16, ZeRO-2, 1 GPU; ~35 GB written
#          to /tmp/bc-ckpt and deleted after each repeat)
#
# The evaluation data and Baichuan-7B's tokenizer are read from ../shared (SHARED=... to change);
# on an offline machine install the wheels of ../shared/gpu/prepare-wheels.sh first.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu-out}"
SHARED="${SHARED:-$ROOT/../shared}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1  # baichuan itself: the installed package (pip install ., or the carried wheel)
mkdir -p "$OUT"
status=0

stage() {  # stage NAME SECONDS CMD...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*" | tee -a "$OUT/$name.log"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$OUT/$name.log"
    [ "$rc" = 0 ] || status=1
}

for s in "${@:-env model train eval gen tok e2e}"; do
  for s in $s; do
    case "$s" in
    env)
        stage env 60 bash -c "nvidia-smi; $PY -c 'import sys, torch; print(sys.version); print(torch.__version__, torch.cuda.get_device_name(0))';
            $PY -c 'import deepspeed; print(\"deepspeed\", deepspeed.__version__)';
            $PY -c 'import xformers; print(\"xformers\", xformers.__version__)';
            $PY -c 'import baichuan; print(\"baichuan\", baichuan.__file__)'; nproc" ;;
    model)
        stage model 110 "$PY" scripts/gpu_check_model.py ;;
    train)
        stage train 130 "$PY" scripts/bench_train.py --backends sdpa,xformers --loss chunked --steps 6 --warmup 3 \
            --json "$OUT/train_chunked.json"
        stage train 100 "$PY" scripts/bench_train.py --backends sdpa --loss plain --engines deepspeed,plain \
            --steps 6 --warmup 3 --port 29600 --json "$OUT/train_plain.json" ;;
    eval)
        stage eval 100 "$PY" scripts/bench_eval.py --data-dir "$SHARED/eval-data/mmlu" \
            --tokenizer "$SHARED/spm-models/baichuan-7b.model" --subjects 8 --per-subject 32 --json-out "$OUT/eval.json" ;;
    gen)
        stage gen 60 "$PY" scripts/bench_generate.py ;;
    tok)
        stage tok 70 "$PY" scripts/bench_tokenizer_threads.py --eval-dir "$SHARED/eval-data" \
            --model "$SHARED/spm-models/baichuan-7b.model" --threads 2,4,16 --pairs 3 ;;
    e2e)
        rm -rf /tmp/bc-e2e
        stage e2e 60 "$PY" -m baichuan tokenize --tokenizer "$SHARED/spm-models/baichuan-7b.model" \
            --input "$SHARED/eval-data" --input-format text --output /tmp/bc-e2e/shards --quiet
        stage e2e 150 "$PY" -m baichuan train --data /tmp/bc-e2e/shards \
            --tokenizer "$SHARED/spm-models/baichuan-7b.model" --output-dir /tmp/bc-e2e/run --model 7b \
            --model-override num_hidden_layers=8 --max-length 4096 --micro-batch-size 2 --steps 12 \
            --warmup-steps 2 --precision bf16 --save-every 0 --log-every 1 --no-progress --no-tensorboard \
            --no-plot --num-procs 1
        cp /tmp/bc-e2e/run/metrics.jsonl "$OUT/e2e_metrics.jsonl" 2>/dev/null ;;
    long)
        stage long 240 "$PY" scripts/bench_long_context.py --device cuda --preset 7b --layers 8 --dtype bf16 \
            --lengths 4096,8192,16384,32768 --rope-scaling yarn:8 --timeout 120 --json "$OUT/long_context.json"
        stage long 200 "$PY" scripts/bench_long_context.py --device cuda --preset 7b --layers 8 --dtype bf16 \
            --lengths 4096,8192,16384,32768 --rope-scaling yarn:8 --modes train --activation-checkpointing \
            --timeout 100 --json "$OUT/long_context_ckpt.json" ;;
    ckpt)
        stage ckpt 400 "$PY" scripts/bench_checkpoint.py --model 7b --layers 8 --precision bf16 --seq 512 \
            --repeats 2 --out /tmp/bc-ckpt ;;
    *)
        echo "gpu_checks.sh: unknown stage $s (env model train eval gen tok e2e long ckpt)" >&2; exit 2 ;;
    esac
  done
done
exit $status
