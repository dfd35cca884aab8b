#!/usr/bin/env bash
# The README's main job: installs what is missing, builds `resona`, tokenizes the
# WikiText-103 sample shipped in data/samples/ (Mistral SentencePiece model), trains the
# small model of configs/quickstart.yaml on the CPU (under a minute on 2 cores), and
# evaluates the final checkpoint on the sample's validation articles.
# Extra arguments are config overrides for the training run (e.g. train.steps=50).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
bazel build //train:resona
resona=bazel-bin/train/resona

$resona prepare-data wikitext103 --dir data/samples/wikitext-103 --out runs/quickstart-data \
  --splits train,valid --threads 2 --train-tokenizer 4096
# A fresh run each time (the run folder refuses to be overwritten otherwise).
rm -rf runs/quickstart
$resona train --config configs/quickstart.yaml "$@"
$resona eval --checkpoint runs/quickstart
