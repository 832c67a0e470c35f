#!/usr/bin/env bash
# The top-k teacher-logit cache against the float32 cache: final accuracy of KD and CSKD + CSWT
# on the 100-class Fashion-MNIST pairs (pair=fashion_mnist_pairs, data=fashion_mnist_pairs_device,
# the pair's 8-epoch recipe), 3 seeds, float32 vs top-5 vs top-10, and the label-only control
# (distill=ce); then write the report and the table and plot of the comparison.
#
#   benchmarks/logit_cache_topk_study.sh                   # into outputs/logit_cache_topk/<time>
#   OUT_DIR=/tmp/topk benchmarks/logit_cache_topk_study.sh # elsewhere
#   benchmarks/logit_cache_topk_study.sh trainer=gpu       # extra overrides go to every job
#   benchmarks/logit_cache_topk_study.sh +trainer.limit_train_batches=200   # the run in the docs
#
# Environment: OUT_DIR (output directory), SEEDS (default 0,1,2), TOPK (default 5,10), PYTHON
# (default python), CSKD_CACHE_DIR (the teacher and logit caches), OMP_NUM_THREADS (default 1).
#
# Every run has the same teacher (teacher.seed=0, trained once and cached) and, for a seed, the
# same initialisation, sample order and augmented views (augment_seed = seed): the float32 and
# top-k runs of a method and seed differ only in the teacher logits the loss gets (float32: the
# teacher's own, bit for bit; top-k: rebuilt from the k largest and one fill value, in every
# run, storing or reading), so the differences are paired by seed.
#
# Writes OUT_DIR/float32/<method>_seed<s>/, OUT_DIR/topk/<method>_k<k>_seed<s>/,
# OUT_DIR/control/ce_seed<s>/, OUT_DIR/benchmark.txt (command, machine, date, wall time), the
# report (report.md and its plots) and topk_accuracy.{md,png} in OUT_DIR. Results:
# docs/benchmarks/logit_cache.md.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT_DIR:-outputs/logit_cache_topk/$(date +%Y-%m-%d_%H-%M-%S)}"
SEEDS="${SEEDS:-0,1,2}"
TOPK="${TOPK:-5,10}"
PYTHON="${PYTHON:-python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p "$OUT_DIR"

common=(
  data=fashion_mnist_pairs_device
  pair=fashion_mnist_pairs
  distill=kd,cskd_cswt
  "seed=$SEEDS"
  teacher.seed=0
  teacher.logit_cache=true
  callbacks.progress_bar=null
)
float32_cmd=("$PYTHON" -m cskd_lightning.app.train -m "${common[@]}"
  teacher.logit_cache_dtype=float32
  'hydra.sweep.subdir=${distill.name}_seed${seed}' "hydra.sweep.dir=$OUT_DIR/float32" "$@")
topk_cmd=("$PYTHON" -m cskd_lightning.app.train -m "${common[@]}"
  teacher.logit_cache_dtype=topk "teacher.logit_cache_topk=$TOPK"
  'hydra.sweep.subdir=${distill.name}_k${teacher.logit_cache_topk}_seed${seed}'
  "hydra.sweep.dir=$OUT_DIR/topk" "$@")

control_cmd=("$PYTHON" -m cskd_lightning.app.train -m data=fashion_mnist_pairs_device
  pair=fashion_mnist_pairs distill=ce "seed=$SEEDS" teacher.seed=0 callbacks.progress_bar=null
  'hydra.sweep.subdir=${distill.name}_seed${seed}' "hydra.sweep.dir=$OUT_DIR/control" "$@")

start=$(date +%s)
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "machine: $(nproc --all) CPU cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))," \
    "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "python: $("$PYTHON" -c 'import sys, torch, lightning; print(sys.version.split()[0], "torch", torch.__version__, "lightning", lightning.__version__)')"
  echo "OMP_NUM_THREADS=$OMP_NUM_THREADS"
  echo "command 1: ${float32_cmd[*]}"
  echo "command 2: ${topk_cmd[*]}"
  echo "command 3: ${control_cmd[*]}"
} | tee "$OUT_DIR/benchmark.txt"

"${float32_cmd[@]}"
"${topk_cmd[@]}"
"${control_cmd[@]}"

wall=$(($(date +%s) - start))
{
  echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "wall time: ${wall} s ($((wall / 60)) min $((wall % 60)) s)"
} | tee -a "$OUT_DIR/benchmark.txt"

"$PYTHON" -m cskd_lightning.app.report "$OUT_DIR"
"$PYTHON" benchmarks/logit_cache_topk_plot.py "$OUT_DIR"
echo "Report: $OUT_DIR/report.md"
