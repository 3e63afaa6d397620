#!/usr/bin/env bash
# Offline CPU evaluation grid on the four shipped ImageNet models (docs/evaluation.md).
# Optional NRP: pass any purifier file, e.g. after `make demo`:
#   experiments/offline.sh defenses=with_nrp defenses.NRP.weights=outputs/demo-none/purifier.pth
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} WANDB_MODE=${WANDB_MODE:-offline}
exec "${PY:-.venv/bin/python}" eval.py experiment=offline "$@"
