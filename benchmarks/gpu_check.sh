#!/usr/bin/env bash
# The prepared script for a GPU window: grow the paper-scale fig6 sweep for a time budget, then
# run the GPU benchmarks.  Every result lands in one folder, to be committed with the device named.
#
#   bash benchmarks/gpu_check.sh [BUDGET_SECONDS [DEST]]
#
# BUDGET_SECONDS  sweep budget (default 480): no training unit is started that would not finish in
#                 time; finished units are kept and the next window resumes them.
# DEST            results folder (default "$OUT/gpu_check" when $OUT is set, as on the device
#                 machine, else paper_figures/results/gpu_check).  The sweep resumes from the
#                 committed runs in paper_figures/results/fig6_paper/ when DEST has none yet.
# Environment: SCALE (paper), DEVICE (cuda), BENCHMARKS (1; 0 skips them), GPMARGIN_DATA (the
# carried copy of the data, default ./data), PYTHON (python3).  The CPU test of this script runs
# SCALE=smoke DEVICE=cpu BENCHMARKS=0.  It runs from source (PYTHONPATH=.) and needs torch, numpy,
# scipy, matplotlib, tqdm and threadpoolctl in $PYTHON (no Dask: units run in this process).
# Through the device tool: copy ../shared/data/mnist into ./data first and name "data" in carry.
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET="${1:-480}"
DEST="${2:-${OUT:+$OUT/gpu_check}}"
DEST="${DEST:-paper_figures/results/gpu_check}"
SCALE="${SCALE:-paper}"
DEVICE="${DEVICE:-cuda}"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export GPMARGIN_DATA="${GPMARGIN_DATA:-$PWD/data}"
COMMITTED=paper_figures/results/fig6_paper
SWEEP="$DEST/fig6_$SCALE"

mkdir -p "$DEST"
"$PYTHON" - "$DEST/device.txt" <<'EOF'
import platform, sys, torch
lines = [f"python {platform.python_version()}, torch {torch.__version__}, cpu {platform.processor() or platform.machine()}"]
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    lines.append(f"gpu {torch.cuda.get_device_name(0)}, {p.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} device(s)")
else:
    lines.append("gpu none")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
if [ "$SCALE" = paper ] && [ ! -d "$SWEEP/.state" ] && [ -d "$COMMITTED/.state" ]; then
    mkdir -p "$SWEEP" && cp -r "$COMMITTED/.state" "$SWEEP/"   # resume the committed runs
fi
"$PYTHON" -m gpmargin validate fig6 --scale "$SCALE" --device "$DEVICE" --workers 0 --no-progress \
    --budget "$BUDGET" --out "$SWEEP" 2>&1 | tee "$DEST/sweep.log"
if [ "${BENCHMARKS:-1}" != 0 ]; then
    "$PYTHON" benchmarks/kernels.py --device "$DEVICE" --n 4000 10000 --no-nt --repeats 3 2>&1 | tee "$DEST/kernels.txt"
    "$PYTHON" benchmarks/ensemble.py --device "$DEVICE" 2>&1 | tee "$DEST/ensemble.txt"
fi
echo "results in $DEST; commit them with the device named ($(tail -1 "$DEST/device.txt"))"
