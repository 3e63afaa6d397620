#!/usr/bin/env bash
# Fig. 5 ablation sweep: one purifier per ablation, each evaluated under the same SSP, then one table.
#   experiments/fig5_ablations.sh                      # offline CPU: experiment=demo (minutes per job)
#   EXPERIMENT=nrp_full experiments/fig5_ablations.sh trainer.devices=4   # the paper's setup (GPU)
# Extra arguments are Hydra overrides for every job.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
EXPERIMENT=${EXPERIMENT:-demo}
ABLATIONS=${ABLATIONS:-none,no_feat,gnp,fgsp,vanilla_gan,no_pixel,no_adv}
ROOT=${NRP_OUTPUT_ROOT:-outputs}
before=$(ls -d "$ROOT/multirun/$EXPERIMENT"/*/ 2>/dev/null | sort | tail -n 1 || true)
"$PY" train.py -m "experiment=$EXPERIMENT" "ablation=$ABLATIONS" "$@"
sweep=$(ls -d "$ROOT/multirun/$EXPERIMENT"/*/ | sort | tail -n 1)
[ "$sweep" != "$before" ] || { echo "no new sweep folder under $ROOT/multirun/$EXPERIMENT" >&2; exit 1; }
"$PY" experiments/collect_ablations.py "$sweep" --out "$sweep/ablations.md" --plot "$sweep/ablations.png"
