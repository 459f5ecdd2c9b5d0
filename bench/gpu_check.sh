#!/usr/bin/env bash
# The GPU check (issue 15, part 3): run on a GPU machine, under 8 minutes on one H100/H200.
#   bash bench/gpu_check.sh [OUT_DIR]            # OUT_DIR (default runs/gpu_check) gets gpu_check.json and logs
# 1. bench/gpu_check.py: vLLM output tokens/s (prefix caching), training tokens/s and MFU at 2 x 2,048 of an
#    XGLM-564M-shaped random student in bf16, peak GPU memory, scoring throughput against lm-eval's HFLM;
# 2. the rehearsal profile (the paper's every key, tiny models) end to end on the GPU, as CI runs it on CPU;
# 3. the rehearsal's teacher again on Ray (teacher.engine=ray: ray.data.llm's vLLM processor), when ray and vllm
#    are importable: the path CI cannot run on CPU.
# On a machine without a GPU it runs the same, small (--size cpu), which is what the test suite checks.
# Needs brdlib and its dependencies importable by $BRD_PYTHON (default python3): pip install -e '.[dev]' (+ vllm).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/gpu_check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
py="${BRD_PYTHON:-python3}"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia_smi.csv"
status=0
timeout "${BRD_GPU_CHECK_BENCH_S:-330}" "$py" bench/gpu_check.py --out "$out/gpu_check.json" 2>&1 | tee "$out/gpu_check.log" || status=1
if [[ "${BRD_GPU_CHECK_REHEARSAL:-1}" == "1" ]]; then
  start=$(date +%s)
  extra=()
  if ! "$py" -c 'import vllm' 2>/dev/null; then
    echo "[gpu_check] rehearsal: vllm is not importable here, so its teacher runs on transformers"
    extra=(teacher.backend=transformers)
  fi
  timeout "${BRD_GPU_CHECK_REHEARSAL_S:-150}" "$py" -m brdlib.cli run rehearsal output_root="$out/rehearsal" \
    "${extra[@]}" > "$out/rehearsal.log" 2>&1 || status=1
  echo "[gpu_check] rehearsal: exit ${PIPESTATUS[0]:-?} in $(( $(date +%s) - start )) s (log: $out/rehearsal.log)"
  tail -n 15 "$out/rehearsal.log"
fi
if [[ "${BRD_GPU_CHECK_RAY:-1}" == "1" ]] && "$py" -c 'import ray.data.llm, vllm' 2>/dev/null; then
  start=$(date +%s)
  timeout "${BRD_GPU_CHECK_RAY_S:-150}" "$py" -m brdlib.cli run rehearsal output_root="$out/rehearsal_ray" \
    teacher.engine=ray teacher.ray.workers=1 --only 00 01 > "$out/rehearsal_ray.log" 2>&1 || status=1
  echo "[gpu_check] teacher on Ray + vLLM: exit ${PIPESTATUS[0]:-?} in $(( $(date +%s) - start )) s (log: $out/rehearsal_ray.log)"
  tail -n 8 "$out/rehearsal_ray.log"
fi
exit $status
