#!/usr/bin/env bash
# Compare ce, kd, dkd, dist, cskd and cskd_cswt on real Fashion-MNIST, 3 seeds each, on the
# identical budget of conf/experiment/fashion_mnist_comparison.yaml; then write the report.
#
#   benchmarks/compare_methods.sh                    # into outputs/fashion_mnist_comparison/<time>
#   OUT_DIR=/tmp/cmp benchmarks/compare_methods.sh   # elsewhere
#   benchmarks/compare_methods.sh trainer=gpu        # extra overrides go to every job
#
# Environment: OUT_DIR (output directory), SEEDS (default 0,1,2), PYTHON (default python),
# CSKD_CACHE_DIR (teacher cache; point it at an empty directory to time the teacher too),
# FASHION_MNIST_DIR (the idx files, default /usr/share/datasets/fashion-mnist),
# OMP_NUM_THREADS (default 1: on a small shared CPU more intra-op threads only spin-wait).
#
# Writes OUT_DIR/main/<method>_seed<s>/ (one run each), OUT_DIR/dkd/dkd_seed<s>/ (DKD needs its
# own multirun: its warm-up is shortened to the 8-epoch budget, a key only DKD's config has),
# OUT_DIR/benchmark.txt (command, machine, date, wall time) and cskd-report's report.md and PNGs
# in OUT_DIR. Results on a 2-core CPU: docs/benchmarks/fashion_mnist.md.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT_DIR:-outputs/fashion_mnist_comparison/$(date +%Y-%m-%d_%H-%M-%S)}"
SEEDS="${SEEDS:-0,1,2}"
PYTHON="${PYTHON:-python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p "$OUT_DIR"

common=(
  experiment=fashion_mnist_comparison
  "seed=$SEEDS"
  'hydra.sweep.subdir=${distill.name}_seed${seed}'
  callbacks.progress_bar=null
)
main_cmd=("$PYTHON" -m cskd_lightning.app.train -m "${common[@]}"
  distill=ce,kd,dist,cskd,cskd_cswt "hydra.sweep.dir=$OUT_DIR/main" "$@")
dkd_cmd=("$PYTHON" -m cskd_lightning.app.train -m "${common[@]}"
  distill=dkd distill.loss.warmup_epochs=1 "hydra.sweep.dir=$OUT_DIR/dkd" "$@")

start=$(date +%s)
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "machine: $(nproc --all) CPU cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))," \
    "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "python: $("$PYTHON" -c 'import sys, torch, lightning; print(sys.version.split()[0], "torch", torch.__version__, "lightning", lightning.__version__)')"
  echo "OMP_NUM_THREADS=$OMP_NUM_THREADS"
  echo "command 1: ${main_cmd[*]}"
  echo "command 2: ${dkd_cmd[*]}"
} | tee "$OUT_DIR/benchmark.txt"

"${main_cmd[@]}"
"${dkd_cmd[@]}"

wall=$(($(date +%s) - start))
{
  echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "wall time: ${wall} s ($((wall / 60)) min $((wall % 60)) s)"
} | tee -a "$OUT_DIR/benchmark.txt"

"$PYTHON" -m cskd_lightning.app.report "$OUT_DIR"
echo "Report: $OUT_DIR/report.md"
