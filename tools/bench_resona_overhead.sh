#!/usr/bin/env bash
# The cost of Resona in a pretraining step: the paper's GLA (configs/wikitext103/gla.yaml,
# hidden 600, 24 layers) at T=2048, batch 8, with and without Resona at layers 0, 11 and 23
# (model.resona defaults otherwise), on the shipped WikiText-103 sample, one after the other
# on the same GPU. Prints the steady-state tokens/s of each (the first logged interval is
# warm-up and dropped) and the ratio.
#
#   tools/bench_resona_overhead.sh [RESONA_BINARY] [OUT_DIR] [key=value ...]
set -euo pipefail
resona=${1:-resona}
out=${2:-/tmp/resona-overhead}
shift $(( $# >= 2 ? 2 : $# ))
cd "$(dirname "$0")/.."
mkdir -p "$out"
[ -f "$out/data/train/index.json" ] ||
  "$resona" prepare-data wikitext103 --dir data/samples/wikitext-103 --out "$out/data" \
    --splits train --no-progress >/dev/null
common=(data.train="$out/data/train" data.seq_len=2048 train.batch_size=8 train.steps=25
        train.log_every=5 checkpoint.every=1000 eval.every=0 train.device=cuda "$@")
for variant in plain resona; do
  extra=()
  [ $variant = resona ] && extra=("model.resona.layers=[0, 11, 23]")
  rm -rf "$out/$variant"
  "$resona" train --config configs/wikitext103/gla.yaml --quiet "${common[@]}" \
    train.run_dir="$out/$variant" "${extra[@]}"
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
tps = {}
for v in ("plain", "resona"):
    recs = [json.loads(l) for l in open(f"{out}/{v}/metrics.jsonl")]
    steady = [r["tokens_per_s"] for r in recs[1:]]
    tps[v] = sum(steady) / len(steady)
    print(f"{v}: {tps[v]:.0f} tokens/s (mean of {len(steady)} intervals after warm-up)")
print(f"Resona at 3 layers / plain: step time x{tps['plain'] / tps['resona']:.3f}")
PY
