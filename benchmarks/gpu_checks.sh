#!/usr/bin/env bash
# The GPU figures of README's Benchmarks table in one call of the device tool (about 8 minutes on an H100 / H200),
# each benchmark's output (its last line is JSON) written to $OUT/NAME.txt.
#
# Here, first:  ../shared/gpu/fetch-wheels.sh scikit-image imageio imageio-ffmpeg lazy-loader tifffile networkx \
#                   pycocotools
# Then run, with .whl in carry:  bash benchmarks/gpu_checks.sh
# SCALE=0.01 DEVICE=cpu bash benchmarks/gpu_checks.sh  runs the same steps tiny on the CPU (a dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-checks}
DEVICE=${DEVICE:-cuda}
SCALE=${SCALE:-1}
mkdir -p "$OUT"
if [[ -d .whl ]] && ! python3 -c "import gymnasium, ale_py, stable_baselines3, wandb" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} WANDB_MODE=disabled PYTHONUNBUFFERED=1
steps() { python3 -c "print(max(int($1 * $SCALE), $2))"; }

python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')" \
  | tee "$OUT/device.txt"
run() {  # NAME TIMEOUT_S ARGS...: one benchmark, its output kept whatever happens
  local name=$1 limit=$2
  shift 2
  echo "== $name: python -m benchmarks.$name $*"
  timeout "$limit" python3 -m "benchmarks.$name" "$@" > "$OUT/$name.txt" 2>&1
  echo "   exit $?: $(tail -1 "$OUT/$name.txt" | cut -c1-400)"
}
run dqn_atari_throughput 240 --device "$DEVICE" --steps "$(steps 20000 1200)" --learning-starts "$(steps 2000 1000)"
run a2c_atari_throughput 150 --device "$DEVICE" --envs 16 64 --steps "$(steps 32000 320)"
run train_throughput 90 --device "$DEVICE" --epochs 6
run amp_learning 120 --device "$DEVICE" --seeds 0 1 --total-steps "$(steps 20000 1000)" \
  --eval-every "$(steps 4000 500)" --eval-episodes 20
run detection_throughput 100 --device "$DEVICE" --workers 4 --images "$(steps 2048 128)" --size 128
