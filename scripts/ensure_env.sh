# Sourced by run_all.sh and run_tests.sh: create or reuse the project's virtual environment and
# (re)install the project when pyproject.toml or this script changed since the last install.
#   BRD_VENV=path     use another virtual environment (default: .venv in the repository)
#   BRD_NO_VENV=1     use the python already on PATH (a conda env from environment.yml, say)
#   BRD_EXTRAS=dev    the pyproject extras to install (default: dev, plus cpu on a Linux x86-64 machine without GPU)
set -euo pipefail
_brd_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${BRD_NO_VENV:-0}" != "1" ]]; then
  _brd_venv="${BRD_VENV:-$_brd_root/.venv}"
  if [[ ! -x "$_brd_venv/bin/python" ]]; then
    echo "brd: creating virtual environment $_brd_venv"
    "${BRD_PYTHON:-python3}" -m venv "$_brd_venv"
  fi
  # shellcheck disable=SC1091
  source "$_brd_venv/bin/activate"
fi
_brd_stamp="$(python -c 'import sys; print(sys.prefix)')/.brd-install-stamp"
_brd_want="$(cat "$_brd_root/pyproject.toml" "$_brd_root/scripts/ensure_env.sh" | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$_brd_stamp" || "$(cat "$_brd_stamp")" != "$_brd_want" ]] || ! python -c 'import brdlib' 2>/dev/null; then
  echo "brd: installing the project into $(python -c 'import sys; print(sys.prefix)') (first run or changed pyproject.toml)"
  python -m pip install -q --upgrade pip
  # torch first and pinned: 2.13.0 is the CPU build on this project's machines; an unpinned torch
  # would pull a multi-GB CUDA build. A torch already installed (a GPU build, say) is kept.
  python -c 'import torch' 2>/dev/null || python -m pip install -q "torch==2.13.0"
  # llama.cpp (extra "cpu", a prebuilt wheel) runs the GGUF teachers on CPU ~2x faster than transformers;
  # installed where its wheel exists (Linux x86-64) and no GPU is present. BRD_EXTRAS overrides the choice.
  _brd_extras="${BRD_EXTRAS:-dev}"
  if [[ -z "${BRD_EXTRAS:-}" && "$(uname -s)-$(uname -m)" == "Linux-x86_64" ]] && ! command -v nvidia-smi >/dev/null 2>&1; then
    _brd_extras="dev,cpu"
  fi
  python -m pip install -q -e "$_brd_root[$_brd_extras]"
  unset _brd_extras
  echo "$_brd_want" > "$_brd_stamp"
fi
unset _brd_root _brd_venv _brd_stamp _brd_want
