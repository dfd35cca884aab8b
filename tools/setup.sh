#!/usr/bin/env bash
# Installs every Debian package the build, the tests and the quickstart need.
# Idempotent: packages already present are left alone, and apt is not touched at all
# when everything is installed.
set -euo pipefail

PACKAGES=(
  bazel-bootstrap        # Bazel 4.2.3, the build
  bazel-rules-java       # rules_java for the offline WORKSPACE
  g++                    # host compiler (also nvcc's)
  libeigen3-dev          # CPU dense math
  libspdlog-dev          # logging
  libfmt-dev             # spdlog's formatting
  libcli11-dev           # CLI
  doctest-dev            # tests
  libyaml-cpp-dev        # configs
  libsentencepiece-dev   # tokenizer
  nlohmann-json3-dev     # JSON (safetensors headers, trainer state, metrics)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "setup: CUDA 13 is expected under /usr/local/cuda (nvcc not found there)" >&2
  exit 1
fi
