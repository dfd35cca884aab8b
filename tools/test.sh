#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing, builds and runs every Bazel test
# target, then prints the test-case counts summed over all binaries and ends with a line
# "N passed, M failed, K skipped". GPU test cases report themselves skipped without a GPU.
# Extra arguments go to `bazel test` (e.g. a target pattern).
set -uo pipefail
cd "$(dirname "$0")/.."

bash tools/setup.sh

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(//...)

# Logs of an earlier run must not stand in for a binary that no longer builds.
find -L bazel-testlogs/ -name test.log -delete 2>/dev/null || true
bazel test --keep_going "${targets[@]}"
bazel_rc=$?

passed=0 failed=0 skipped=0
while read -r label; do
  [ -n "$label" ] || continue
  pkg=${label#//}; pkg=${pkg%%:*}; name=${label##*:}
  log="bazel-testlogs/$pkg/$name/test.log"
  line=$(grep -a "^\[doctest\] test cases:" "$log" 2>/dev/null | tail -n 1)
  if [ -z "$line" ]; then
    echo "no test summary from $label (it did not build, crashed or timed out): counted as 1 failed"
    failed=$((failed + 1))
    continue
  fi
  # [doctest] test cases: 36 | 35 passed | 1 failed | 0 skipped
  p=$(sed -E 's/.*\| *([0-9]+) passed.*/\1/' <<<"$line")
  f=$(sed -E 's/.*\| *([0-9]+) failed.*/\1/' <<<"$line")
  s=$(sed -E 's/.*\| *([0-9]+) skipped.*/\1/' <<<"$line")
  echo "$label: $p passed, $f failed, $s skipped"
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
done < <(bazel query "tests(${targets[*]// / + })" 2>/dev/null)

echo "$passed passed, $failed failed, $skipped skipped"
if [ "$failed" -gt 0 ] || [ "$bazel_rc" -ne 0 ]; then exit 1; fi
