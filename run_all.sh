#!/usr/bin/env bash
# Run the whole study:  ./run_all.sh [profile] [key=value ...]      (default profile: smoke)
#   ./run_all.sh                          # offline, 2-core CPU, PyPI-shipped models
#   ./run_all.sh tiny                     # seconds; meaningless numbers (what the tests run)
#   ./run_all.sh smoke recipes.brd.max_steps=20 --only 00 03
# Executed notebooks go to runs/<profile>/, tables and figures to figures/<profile>/.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_env.sh
profile="smoke"
if [[ $# -gt 0 && "$1" != *=* && "$1" != --* ]]; then profile="$1"; shift; fi
overrides=(); for a in "$@"; do if [[ "$a" == *=* ]]; then overrides+=(--override "$a"); fi; done
if [[ "$profile" != "paper" ]]; then export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"; fi
brd-models install --profile "$profile" "${overrides[@]}"   # the embedded models it uses
exec python -m brdlib.cli run "$profile" "$@"
