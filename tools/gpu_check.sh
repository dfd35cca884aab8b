#!/usr/bin/env bash
# Checks a tree on a GPU machine in one go, from the repository root there, with the
# folder tools/gpu_bundle.sh packed here:
#   1. every CUDA test (cuda_test) and the trainer's tests (train_test, without the CPU
#      MQAR case that CI runs);
#   2. compute-sanitizer memcheck and racecheck over every CUDA test case, both at once,
#      the cases split into SANITIZER_SHARDS shards per tool over the machine's GPUs
#      (SANITIZER_TIMEOUT seconds per shard, 480);
#   3. on GPU 0 alone: the Resona overhead (tools/bench_resona_overhead.sh, float32 and
#      bf16, per-block retrieval), layer_bench and ops_bench, each beside its PyTorch twin.
# Logs, CSVs and summary.txt go to OUT. `--tests` stops after 1 and 2.
#
#   tools/gpu_check.sh DIR OUT [--tests]
set -uo pipefail
[ $# -ge 2 ] || { echo "usage: $0 DIR OUT [--tests]" >&2; exit 2; }
dir=$(cd "$1" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)
tests_only=${3:-}
cd "$(dirname "$0")/.."
nv=$(python3 -c "import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))" 2>/dev/null)/nvidia
export LD_LIBRARY_PATH=$dir/lib:$nv/cudnn/lib:$nv/nccl/lib:$nv/cu13/lib:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 PATH=$PATH:/usr/local/cuda/bin
for f in "$dir"/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x "$dir"/cuda_test "$dir"/train_test "$dir"/resona "$dir"/ops_bench "$dir"/layer_bench
summary=$out/summary.txt
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
[ "$gpus" -gt 0 ] || { echo "$0: no GPU here (nvidia-smi -L lists none)" >&2; exit 1; }
{ nvidia-smi -L; date -u; "$dir"/resona --version; } > "$summary" 2>&1

result() {  # NAME LOG RC: the doctest totals line of LOG and the exit status
  echo "$1: rc=$3 $(grep -a 'test cases:' "$2" | tail -1)" >> "$summary"
}

CUDA_VISIBLE_DEVICES=0 "$dir"/cuda_test > "$out"/cuda_test.log 2>&1
result cuda_test "$out"/cuda_test.log $?
CUDA_VISIBLE_DEVICES=0 "$dir"/train_test -tce='MQAR*' > "$out"/train_test.log 2>&1
result train_test "$out"/train_test.log $?

command -v compute-sanitizer > /dev/null ||
  echo "sanitizers: compute-sanitizer not found (PATH, /usr/local/cuda/bin): not run" >> "$summary"
n=$("$dir"/cuda_test --count 2>&1 | sed -n 's/.*current filters: \([0-9]*\).*/\1/p')
# Both tools at once, SANITIZER_SHARDS shards each (twice the GPUs unless set), shard i
# on GPU i mod GPUs: the sanitizers are bound by host work, so the GPUs can share.
shards=${SANITIZER_SHARDS:-$((2 * gpus))}
per=$(( (n + shards - 1) / shards ))
for tool in memcheck racecheck; do
  for s in $(seq 0 $((shards - 1))); do
    first=$((s * per + 1)) last=$(((s + 1) * per))
    [ "$first" -le "$n" ] || continue
    CUDA_VISIBLE_DEVICES=$((s % gpus)) timeout "${SANITIZER_TIMEOUT:-480}" compute-sanitizer \
      --tool $tool --error-exitcode 1 "$dir"/cuda_test --first=$first --last=$last --duration=true \
      > "$out/$tool.$s.log" 2>&1 &
  done
done
wait
for tool in memcheck racecheck; do
  for s in $(seq 0 $((shards - 1))); do
    [ -f "$out/$tool.$s.log" ] || continue
    echo "$tool shard $s: $(grep -a -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/$tool.$s.log" | tail -1)" \
      "$(grep -a 'test cases:' "$out/$tool.$s.log" | tail -1)" >> "$summary"
  done
done
[ "$tests_only" = --tests ] && { cat "$summary"; exit 0; }

export CUDA_VISIBLE_DEVICES=0
for extra in "" train.precision=bf16; do
  tools/bench_resona_overhead.sh "$dir"/resona /tmp/resona-overhead train.steps=15 \
    model.resona.query_block=64 $extra 2>&1 | tail -3 | sed "s/^/overhead ${extra:-fp32}: /" >> "$summary"
done
"$dir"/layer_bench --csv "$out"/layers_ours.csv > "$out"/layers_ours.md 2>&1
python3 tools/bench_torch_layers.py --csv "$out"/layers_torch.csv > "$out"/layers_torch.md 2>&1
"$dir"/ops_bench --csv "$out"/ops_ours.csv > "$out"/ops_ours.md 2>&1
python3 tools/bench_torch.py --csv "$out"/ops_torch.csv > "$out"/ops_torch.md 2>&1
python3 tools/bench_compare.py "$out"/ops_ours.csv "$out"/ops_torch.csv > "$out"/ops_compare.md 2>&1
echo "benchmarks: $out/{layers,ops}_*.md, ops_compare.md" >> "$summary"
cat "$summary"
