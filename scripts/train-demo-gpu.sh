#!/usr/bin/env bash
# Continue training the demo model on an accelerator, then benchmark it: the one prepared device
# call of issue 12 (the recipe is seggpt_backend/demo/train.py's; this only scales it up).
#
#   bash scripts/train-demo-gpu.sh      # on the device machine (its python3 holds torch + CUDA)
#
# Writes $OUT/weights/{model.safetensors,config.json} (every minute and at the end), $OUT/train.log
# and $OUT/results_quality.md (bench/quality.py on the new weights). Copy the weights into
# seggpt_backend/demo/weights only if that table beats bench/results_quality.md.
#
# Environment: OUT (default /tmp/demo-gpu), DEVICE (cuda), MINUTES (7: training's wall-clock
# budget; the bench takes about a minute more on a GPU), BATCH (64), LR (4e-4), WORKERS (batch
# builders: all cores but two; the numpy task generator needs ~3 ms a sample per core, so on a
# GPU it sets the pace), PYTHON (python3), BENCH_ARGS (more bench/quality.py arguments).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/demo-gpu}
DEVICE=${DEVICE:-cuda}
MINUTES=${MINUTES:-7}
BATCH=${BATCH:-64}
LR=${LR:-4e-4}
cores=$(nproc)
WORKERS=${WORKERS:-$((cores > 3 ? cores - 2 : 1))}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE

"$PYTHON" -c "import torch; print('torch', torch.__version__, 'device', '$DEVICE',
    torch.cuda.get_device_name() if '$DEVICE'.startswith('cuda') else 'cpu')"
# Warm start from the shipped weights, training run 7 (runs 0-6 were used by earlier stages).
"$PYTHON" -m seggpt_backend.demo.train \
    --init seggpt_backend/demo/weights --run 7 --device "$DEVICE" --batch "$BATCH" \
    --steps 1000000 --minutes "$MINUTES" --lr "$LR" --warmup 0.05 \
    --balance-start 0.25 --balance-floor 0.25 --fixed-colour 0.5 --prompt-mask-ratio 0 \
    --instance-fraction 0.3 --semantic-mix 0.35,0.35,0.3 --threads 2 --data-workers "$WORKERS" \
    --out "$OUT/weights" --log "$OUT/train.log" --save-every 60
# shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
# --tune-balance 0.25: the demo recipe's loss floor (bench/quality.py assumes it only for `demo`)
"$PYTHON" bench/quality.py --weights "$OUT/weights" --device "$DEVICE" \
    --tune-balance 0.25 --out "$OUT/results_quality.md" ${BENCH_ARGS:-}
echo "done: $OUT/weights, $OUT/train.log, $OUT/results_quality.md"
