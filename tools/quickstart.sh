#!/usr/bin/env bash
# The README's main command: installs what is missing, builds the `resona` binary and
# trains a small real language model on the CPU on the WikiText-103 sample shipped in
# data/samples/, printing its progress. Extra arguments go to `resona demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
bazel build //train:resona
exec bazel-bin/train/resona demo "$@"
