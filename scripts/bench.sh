#!/usr/bin/env bash
# Benchmarks: each prints `<name> <value> <unit>` lines; this script collects them.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for pkg in fibril-ipam fibril-lab; do
  echo "==> cargo bench -p $pkg" >&2
  cargo bench -p "$pkg" 2>&1 | tee -a "$out" >&2
done
# The cluster figures bring up a whole lab (~3 min): opt in with BENCH_CLUSTER=1.
if [ "${BENCH_CLUSTER:-0}" = 1 ]; then
  echo "==> cargo bench -p fibril --bench cluster" >&2
  cargo bench -p fibril --bench cluster 2>&1 | tee -a "$out" >&2
fi
echo
echo "Figures:"
grep -E '^[a-z0-9]+_[a-z0-9_]+ [0-9.]+ [A-Za-z/%]+$' "$out" || echo "(no figures printed)"
