#!/usr/bin/env bash
# The checks and numbers to take on a lent GPU box, in one go (such a box is lent for minutes, so every stage is
# bounded by the time left and writes its results as it finishes):
#   1. the CUDA tests (bf16 autocast training and scoring against the CPU, model files on the GPU) plus the core
#      tests that need no Ray or S3;
#   2. network speeds on the GPU (benchmarks/models.py);
#   3. the cpu-small network trained on the GPU for many more steps than 20 CPU minutes allow, at several seeds:
#      where that architecture saturates tells whether the CPU goal is a speed problem or a capacity problem;
#   4. the paper profile, trained for the same minutes beside them, then evaluated.
# The box need not have Ray: stages 3-4 use benchmarks/accuracy.py --engine local (same synthesis, split and
# schedule as defectray.train, one process).
#
#   bash benchmarks/gpu.sh DATA OUT [SECONDS_AVAILABLE]
#
# SPEEDS=0 skips stage 2 (already measured on this kind of card); SMALL_SEEDS names the cpu-small runs of
# stage 3 (default "0 1 2").
set -u
DATA=$1
OUT=$2
AVAILABLE=${3:-540}
DEVICE=${DEVICE:-cuda}
SPEEDS=${SPEEDS:-1}
SMALL_SEEDS=${SMALL_SEEDS:-"0 1 2"}
RUNS=${RUNS:-/tmp/defectray-gpu-runs}  # models and pictures stay here; OUT gets the small result files
START=$(date +%s)
mkdir -p "$OUT" "$RUNS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
left() { echo $((AVAILABLE - ($(date +%s) - START))); }
minutes() { python3 -c "print(max(0.5, round(($1) / 60, 2)))"; }

{ nvidia-smi; python3 -c "import torch, numpy, cv2, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  torch.cuda.get_device_name(0), 'numpy', numpy.__version__, 'cv2', cv2.__version__, 'timm', timm.__version__)"
  nproc; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

echo "== 1. tests ($(left) s left)"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_models.py tests/test_metrics.py \
  2>&1 | tee "$OUT/pytest.txt" | tail -15

echo "== 2. network speeds ($(left) s left)"
if [ "$DEVICE" != cpu ] && [ "$SPEEDS" != 0 ]; then
timeout 90 python3 benchmarks/models.py --device "$DEVICE" --paper-batch 8 --quick > "$OUT/models.json" 2>&1
tail -c 1500 "$OUT/models.json"
fi

# Stages 3 and 4 run side by side, all for the same minutes: the cpu-small network leaves the GPU idle most of
# the time (its synthesis runs on one CPU thread per process), so one cpu-small run per seed in SMALL_SEEDS and
# the paper profile share the card. RESERVE seconds stay for evaluation and start-up.
RESERVE=${RESERVE:-150}
TRAIN=$(minutes "$(left) - $RESERVE")
echo "== 3-4. cpu-small (seeds $SMALL_SEEDS) and paper profile side by side for $TRAIN min ($(left) s left)"
for seed in $SMALL_SEEDS; do
  timeout $(($(left) - 10)) python3 benchmarks/accuracy.py --profile cpu-small --engine local --device "$DEVICE" \
    --threads 2 --max-minutes "$TRAIN" --set seed="$seed" --data "$DATA" --out "$RUNS/small-s$seed" \
    --name "cpu-small on GPU, seed $seed" --no-append > "$OUT/small-s$seed.log" 2>&1 &
done
timeout $(($(left) - 10)) python3 benchmarks/accuracy.py --profile paper --engine local --device "$DEVICE" \
  --threads 4 --max-minutes "$TRAIN" --data "$DATA" --out "$RUNS/paper" --name "paper on GPU" --no-append \
  > "$OUT/paper.log" 2>&1 &
wait
# Each log ends with the run's summary as JSON. The small models and every run's per-image scores come back for
# offline analysis (the paper model is too large to bring back).
(cd "$RUNS" && tar -cf "$OUT/models_and_scores.tar" small-s*/model.safetensors small-s*/eval/scores.csv \
  paper/eval/scores.csv paper/eval/metrics.json small-s*/eval/metrics.json 2>/dev/null)
for f in "$OUT"/small-s*.log "$OUT/paper.log"; do echo "-- $f"; tail -c 900 "$f"; echo; done
echo "== done ($(left) s left)"
