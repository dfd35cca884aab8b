#!/usr/bin/env bash
# Runs MQAR configs (configs/mqar/...) as independent `resona train` jobs, several per GPU
# (small models leave a GPU mostly idle), then prints the table of test accuracies.
#
#   tools/mqar_sweep.sh [-j JOBS_PER_GPU] [-r RESONA_BINARY] [-o RUNS_DIR] CONFIG... [-- key=value ...]
#
# Each job's run folder is RUNS_DIR/<backbone>/<variant>/<cell> (train.run_dir overridden),
# its console output RUN_DIR.out; `--` passes overrides to every job (e.g. train.steps=1500).
# The table (tools/mqar_table.py) reads each run's metrics.jsonl.
set -uo pipefail
jobs_per_gpu=4
resona=${RESONA:-resona}
runs=runs/mqar
while getopts "j:r:o:" opt; do
  case $opt in
    j) jobs_per_gpu=$OPTARG ;;
    r) resona=$OPTARG ;;
    o) runs=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
configs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do configs+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
overrides=("$@")
[ ${#configs[@]} -gt 0 ] || { echo "usage: $0 [-j N] [-r resona] [-o runs] CONFIG... [-- key=value ...]" >&2; exit 2; }

gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
[ "$gpus" -gt 0 ] || gpus=1
slots=$((gpus * jobs_per_gpu))
echo "${#configs[@]} runs on $gpus GPU(s), $jobs_per_gpu per GPU"

i=0
for cfg in "${configs[@]}"; do
  rel=${cfg#*configs/mqar/}
  dir="$runs/${rel%.yaml}"
  mkdir -p "$(dirname "$dir")"
  gpu=$((i % gpus))
  (CUDA_VISIBLE_DEVICES=$gpu "$resona" train --config "$cfg" --quiet "train.run_dir=$dir" \
      "${overrides[@]}" >"$dir.out" 2>&1; echo "$? $cfg" >>"$runs/exit_codes") &
  i=$((i + 1))
  # Keep at most `slots` jobs running.
  while [ "$(jobs -rp | wc -l)" -ge "$slots" ]; do sleep 1; done
done
wait
python3 "$(dirname "$0")/mqar_table.py" "$runs"
