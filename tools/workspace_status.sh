#!/usr/bin/env bash
# Bazel's workspace status command (.bazelrc: --workspace_status_command): prints
# "KEY value" lines that stamped rules read from bazel-out/stable-status.txt.
#
#   STABLE_RESONA_REVISION  the git commit of the source tree ("<40 hex>"), with
#                           "-dirty" appended when tracked files differ from it, or
#                           "unknown" outside a git checkout (a source tarball, git
#                           missing, a repository git refuses to read).
#
# A STABLE_ key reruns the actions that read it when its value changes (train/BUILD's
# revision genrule: one small file, then links). It must never fail: a failing status
# command fails every build.
cd "$(dirname "$0")/.." 2>/dev/null || true
rev=$(git rev-parse --verify --quiet HEAD 2>/dev/null) || rev=""
if [[ ! "$rev" =~ ^[0-9a-f]{40}$ ]]; then
  rev=unknown
elif ! git diff --quiet HEAD -- 2>/dev/null; then
  rev="$rev-dirty"
fi
echo "STABLE_RESONA_REVISION $rev"
exit 0
