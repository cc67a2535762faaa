#!/usr/bin/env bash
# The whole test suite, in the order that fails fastest.
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

step "tests (unit, integration, privileged netns)"
cargo test --workspace --no-fail-fast

step "done"
