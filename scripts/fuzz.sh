#!/usr/bin/env bash
# Bounded fuzzing of every parser of untrusted input (crates/*/fuzz).
# cargo-fuzz needs nightly compiler flags; on the stable toolchain they are
# enabled with RUSTC_BOOTSTRAP=1 for the fuzz build only. `make test` does not
# run this: it replays every checked-in corpus through the same entry points.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${FUZZ_SECONDS:-30}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz from crates.io"
  cargo install --locked cargo-fuzz
fi

# FUZZ_CRATES="crates/fibril-ipam/fuzz ..." limits the run to some crates.
for dir in ${FUZZ_CRATES:-crates/*/fuzz}; do
  [ -f "$dir/Cargo.toml" ] || continue
  crate=$(dirname "$dir")
  for target in $(cd "$crate" && RUSTC_BOOTSTRAP=1 cargo fuzz list); do
    echo "==> fuzz $crate $target for ${SECONDS_PER_TARGET}s"
    # New inputs go to a scratch corpus (the first directory), so the checked-in
    # corpus only changes when someone copies a finding in on purpose.
    scratch=$(mktemp -d)
    (cd "$crate" && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$target" \
      "$scratch" "fuzz/corpus/$target" -- -max_total_time="$SECONDS_PER_TARGET")
    rm -rf "$scratch"
  done
done
