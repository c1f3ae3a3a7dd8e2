#!/usr/bin/env bash
# The checks and numbers to take on a lent GPU box, in one go (such a box is lent for minutes, so every stage is
# bounded by the time left and writes its results as it finishes):
#   1. the CUDA tests (bf16 autocast training and scoring against the CPU, model files on the GPU) plus the core
#      tests that need no Ray or S3;
#   2. network speeds on the GPU (benchmarks/models.py);
#   3. the cpu-small network trained on the GPU for many more steps than 20 CPU minutes allow: where that
#      architecture saturates tells whether the CPU goal is a speed problem or a capacity problem;
#   4. the paper profile, trained for the minutes left, then evaluated.
# The box need not have Ray: stages 3-4 use benchmarks/accuracy.py --engine local (same synthesis, split and
# schedule as defectray.train, one process).
#
#   bash benchmarks/gpu.sh DATA OUT [SECONDS_AVAILABLE]
set -u
DATA=$1
OUT=$2
AVAILABLE=${3:-540}
DEVICE=${DEVICE:-cuda}
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
if [ "$DEVICE" != cpu ]; then
timeout 90 python3 benchmarks/models.py --device "$DEVICE" --paper-batch 8 --quick > "$OUT/models.json" 2>&1
tail -c 1500 "$OUT/models.json"
fi

# The rest is split: 40 % for the cpu-small network, 60 % for the paper profile, each keeping ~75 s for
# evaluation and start-up.
REST=$(left)
SMALL=$(minutes "($REST * 0.4) - 75")
echo "== 3. cpu-small network on the GPU for $SMALL min ($(left) s left)"
timeout $((REST * 4 / 10 + 30)) python3 benchmarks/accuracy.py --profile cpu-small --engine local --device "$DEVICE" \
  --threads 4 --max-minutes "$SMALL" --data "$DATA" --out "$RUNS/small" --name "cpu-small on GPU" --no-append \
  > "$OUT/small.log" 2>&1
cp "$RUNS/small/accuracy.json" "$OUT/small.json"
tail -c 1200 "$OUT/small.log"

PAPER=$(minutes "$(left) - 120")
echo "== 4. paper profile for $PAPER min ($(left) s left)"
timeout $(($(left) - 5)) python3 benchmarks/accuracy.py --profile paper --engine local --device "$DEVICE" \
  --threads 4 --max-minutes "$PAPER" --data "$DATA" --out "$RUNS/paper" --name "paper on GPU" --no-append \
  > "$OUT/paper.log" 2>&1
cp "$RUNS/paper/accuracy.json" "$OUT/paper.json"
tail -c 1500 "$OUT/paper.log"
echo "== done ($(left) s left)"
