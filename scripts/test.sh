#!/usr/bin/env bash
# The whole test suite, in the order that fails fastest, then a check that no
# test left namespaces, bpffs pins, lab state or processes behind.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
step() { echo; echo "==> $* ($(( $(date +%s) - start ))s)"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "make test runs privileged network-namespace tests and must run as root" >&2
  exit 1
fi

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "tests (unit, integration, privileged netns, packet-level BPF)"
cargo test --workspace --no-fail-fast

step "leftovers"
# Test suites share one parent pin directory; it goes once the last suite is done.
rmdir /sys/fs/bpf/fibril-test 2>/dev/null || true
left=0
ns=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^(fl-|fibril)' || true)
if [ -n "$ns" ]; then echo "leftover network namespaces:"; echo "$ns"; left=1; fi
pins=$(ls /sys/fs/bpf 2>/dev/null | grep -i fibril || true)
if [ -n "$pins" ]; then echo "leftover bpffs pins: $pins"; left=1; fi
labs=$(ls /run/fibril/labs 2>/dev/null || true)
if [ -n "$labs" ]; then echo "leftover lab state: $labs"; left=1; fi
if [ "$left" -ne 0 ]; then
  echo "tests left state behind (see above)" >&2
  exit 1
fi
echo "nothing left behind"

step "done"
