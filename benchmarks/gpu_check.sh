#!/usr/bin/env bash
# The GPU checks, as run on a lent GPU machine (benchmarks/RESULTS.md has the output).
#
#   benchmarks/gpu_check.sh OUT PHASE [PHASE ...]
#
# Phases (each under its own time limit, a failure does not stop the next one; logs in OUT;
# PHASE1+PHASE2 runs two at once, for phases whose timings do not matter):
#   env      nvidia-smi, torch / Lightning versions
#   tests    the CUDA tests: pytest -m gpu tests/test_cuda.py tests/test_ssp.py
#   explore  experiment=nrp_cpu variants trained side by side on the GPU (the CPU recipe's levers that cost
#            too much on 2 CPU cores), each stopped after its steps (2000 unless a spec sets steps=) or $EXPLORE_MAX_TIME
#            (default 00:00:03:30); $EXPLORE lists them as "name override ...;name override ..."
#   bench    benchmarks/bench.py --device cuda --full, headline $HEADLINE (default bf16_channels_last),
#            fast paths $VARIANTS (default the eager ones: compile costs minutes at full size)
#   side     benchmarks/side_by_side.py against the authors' scripts in $AUTHORS (default .authors)
#   train    experiment=nrp_full with MobileNetV2 features on the photo corpus through DDP on one GPU
#            (NCCL; the code path of four), for TRAIN_MINUTES (default 2) minutes, then its report
#
# Needs: the project on PYTHONPATH (src/) with hydra-core, omegaconf and the offline MobileNetV2
# weights package importable, and data/photos (python scripts/build_photo_corpus.py).
set -u
OUT=${1:?usage: gpu_check.sh OUT PHASE...}; shift
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1
PY=${PY:-python3}
AUTHORS=${AUTHORS:-.authors}
stamp() { echo "=== $(date -u +%H:%M:%S) $*"; }

phase_env() {
  nvidia-smi
  $PY -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'lightning', pl.__version__, torch.cuda.get_device_name(0))"
}

phase_tests() {
  timeout ${TESTS_TIMEOUT:-240} $PY -m pytest -q -m gpu -p no:cacheprovider -o addopts="" -rA tests/test_cuda.py tests/test_ssp.py
}

explore_run() {  # name, overrides...
  local name=$1; shift
  OMP_NUM_THREADS=2 timeout ${EXPLORE_TIMEOUT:-300} $PY train.py experiment=nrp_cpu trainer=gpu trainer.precision=32-true \
    trainer.benchmark=true data.num_workers=2 +trainer.max_time=${EXPLORE_MAX_TIME:-00:00:03:30} run_name="gpu_$name" \
    paths.output_root="$OUT/runs" "$@" >"$OUT/explore_$name.log" 2>&1
  echo "explore $name: exit $? $(grep -o 'max_steps=[0-9]* reached\|max_time.*reached' "$OUT/explore_$name.log" | tail -1)"
}

phase_explore() {
  local spec
  IFS=';' read -ra specs <<<"${EXPLORE:-nf64 model.nf=64 model.gc=32;crop128 data.crop_size=128;nf64_crop128 model.nf=64 model.gc=32 data.crop_size=128;constant_lr module.lr_schedule=constant}"
  for spec in "${specs[@]}"; do
    # shellcheck disable=SC2086  # a spec is a name and its overrides, split on spaces
    explore_run $spec &
  done
  wait
}

phase_bench() {
  timeout ${BENCH_TIMEOUT:-300} $PY benchmarks/bench.py --device cuda --full --headline ${HEADLINE:-bf16_channels_last} --variants ${VARIANTS:-fp32,bf16,channels_last,act_ckpt} \
    --no-scaling --out "$OUT/bench"
}

phase_side() {
  timeout ${SIDE_TIMEOUT:-240} $PY benchmarks/side_by_side.py --authors "$AUTHORS" --device cuda --images 128 --ssp-images 64 --photos data/photos/train \
    --batch-size 32 --out "$OUT/side"
  local rc=$?
  # the random weights it saved (VGG16 528 MB, the paper's RRDB 67 MB) stay on the machine
  rm -rf "$OUT/side/torch_home" "$OUT"/side/pretrained_purifiers "$OUT"/side/*/pretrained_purifiers
  return $rc
}

phase_train() {
  local minutes=${TRAIN_MINUTES:-2}
  timeout $((minutes * 60 + 150)) $PY train.py experiment=nrp_full backbone=mobilenet_v2 data=photos \
    data.batch_size=16 data.num_workers=6 trainer.devices=1 logger=csv +trainer.max_time="00:00:0${minutes}:00" \
    val_every=250 checkpoint_every=250 run_name=gpu_nrp_full paths.output_root="$OUT/runs"
}

run_phase() {
  local phase=$1 start
  start=$(date +%s)
  stamp "phase $phase"
  "phase_$phase" >"$OUT/$phase.log" 2>&1
  echo "exit $?" >>"$OUT/$phase.log"
  stamp "phase $phase done in $(( $(date +%s) - start )) s"
  tail -6 "$OUT/$phase.log"
}

for spec in "$@"; do  # a+b: phases a and b at the same time
  for phase in ${spec//+/ }; do run_phase "$phase" & done
  wait
done
