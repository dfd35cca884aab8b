#!/usr/bin/env bash
# Packs what tools/gpu_check.sh runs into one folder that can be copied to a GPU machine:
# the CUDA and trainer tests, the `resona` binary and the two benchmarks, built for sm_90
# only (H100/H200: half the kernel images, so the folder stays small), stripped and
# gzipped, with the non-CUDA shared libraries they link from this machine (yaml-cpp,
# SentencePiece) in DIR/lib. The CUDA libraries are expected on the GPU machine.
#
#   tools/gpu_bundle.sh DIR        then, there:  tools/gpu_check.sh DIR OUT
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
dir=$1
cd "$(dirname "$0")/.."
targets=(//tests:cuda_test //tests:train_test //train:resona //cuda/bench:ops_bench
         //cuda/bench:layer_bench)
bazel build --define=cuda_archs=90 "${targets[@]}"
bin=$(bazel info --define=cuda_archs=90 bazel-bin)
rm -rf "$dir"
mkdir -p "$dir/lib"
for t in "${targets[@]}"; do
  path=${t#//}
  path=${path/://}
  name=$(basename "$path")
  cp "$bin/$path" "$dir/$name"
  chmod u+w "$dir/$name"
  strip "$dir/$name"
  # Shared libraries outside the C/C++ runtime and CUDA, e.g. libyaml-cpp.so.0.7.
  libs=$(ldd "$dir/$name" | awk '/=> \// {print $3}' |
    grep -v -E '/(libc|libm|libgcc_s|libstdc\+\+|libpthread|libdl|librt|ld-linux[^/]*)\.so|/libcu|/libnv' ||
    true)
  [ -z "$libs" ] || cp -n -t "$dir/lib" $libs
  gzip -9f "$dir/$name"
done
du -sh "$dir"
