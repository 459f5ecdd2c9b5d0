#!/usr/bin/env bash
# Open the study in JupyterLab:  ./lab.sh [profile] [jupyter lab options ...]      (default profile: smoke)
#   ./lab.sh                      # the notebooks on the smoke profile, in the project's .venv
#   ./lab.sh tiny --port 8899     # another profile; options go to `jupyter lab`
# Creates or reuses .venv as run_all.sh does, installs the "notebook" extra (JupyterLab) on first use, and starts
# JupyterLab at the repository root with notebooks/ open (`brd lab`). Kernels run in the notebook's folder with
# this environment's python, so `import brdlib`, the profile (BRD_PROFILE, read by each notebook's parameters
# cell) and the data mirror (../shared/data or BRD_DATA_DIR, found from brdlib's location) need nothing more.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_env.sh
_brd_lab_stamp="$(python -c 'import sys; print(sys.prefix)')/.brd-notebook-stamp"
_brd_lab_want="$(cat pyproject.toml lab.sh | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$_brd_lab_stamp" || "$(cat "$_brd_lab_stamp")" != "$_brd_lab_want" ]] \
    || ! python -c 'import jupyterlab' 2>/dev/null; then
  echo "brd: installing JupyterLab (the project's 'notebook' extra; first use or changed pyproject.toml)"
  python -m pip install -q -e ".[notebook]"
  echo "$_brd_lab_want" > "$_brd_lab_stamp"
fi
exec python -m brdlib.cli lab "$@"   # brdlib.cli.lab_command: BRD_PROFILE, HF_HUB_OFFLINE, the server at the root
