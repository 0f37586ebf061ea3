#!/usr/bin/env bash
# The GPU figures of README's Benchmarks table in one call of the device tool (about 8 minutes on an H100 / H200),
# each benchmark's output (its last line is JSON) written to $OUT/NAME.txt.
#
# Here, first:  ../shared/gpu/fetch-wheels.sh scikit-image imageio imageio-ffmpeg lazy-loader tifffile networkx \
#                   pycocotools
# Then run, with .whl in carry:  bash benchmarks/gpu_checks.sh
# SCALE=0.01 DEVICE=cpu bash benchmarks/gpu_checks.sh  runs the same steps tiny on the CPU (a dry run).
#
# bash benchmarks/gpu_checks.sh grid  spends the call on Atari 100k cells instead (GRID_MINUTES, default 9, of
# benchmarks/atari100k.py's grid over GAMES and SEEDS): the finished cells in benchmarks/results/atari100k/cells are
# skipped, each new one lands in $OUT/atari100k/cells/GAME-sSEED.json (copy them into benchmarks/results/atari100k/
# cells and rerun `python -m benchmarks.atari100k` here to redo the summary). A cell the budget stops is lost with
# the machine (its checkpoint holds the replay, too big to bring back), so size GRID_MINUTES to whole cells.
# SCALE=0.003 DEVICE=cpu bash benchmarks/gpu_checks.sh grid  is its dry run (300-step cells).
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
if [[ "${1:-}" == "grid" ]]; then
  grid="$OUT/atari100k"
  mkdir -p "$grid/cells"
  cp benchmarks/results/atari100k/published.json "$grid/"
  extra=""
  if [[ "$SCALE" == "1" ]]; then  # the committed cells are skipped
    cp benchmarks/results/atari100k/cells/*.json "$grid/cells/" 2>/dev/null
  else  # a dry run: short cells that still learn, checkpoint and evaluate, whatever has been committed
    extra="--total-steps $(steps 100000 300) --learning-starts $(steps 1600 100) --eval-episodes 1"
  fi
  # shellcheck disable=SC2086
  python3 -m benchmarks.atari100k --device "$DEVICE" --games ${GAMES:-boxing breakout pong} --seeds ${SEEDS:-1 2} \
    --max-minutes "${GRID_MINUTES:-9}" --runs-dir /tmp/atari100k-runs --out "$grid" --reps 2000 --extra "$extra" \
    2>&1 | tee "$OUT/atari100k.txt"
  exit "${PIPESTATUS[0]}"
fi
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
