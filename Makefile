# Fibril: the two set-up commands are `make lab` and `make test`.
# Both install what is missing first (scripts/setup.sh is idempotent and quick
# when everything is present).

CARGO ?= cargo
RELEASE_BIN := target/release/fibril
TOPOLOGY ?= seed-3w

.PHONY: all setup build build-release lab lab-down test lint fmt bench bench-datapath fuzz clean

all: build

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --workspace

build-release: setup
	$(CARGO) build --release -p fibril

## make lab: install, build, bring up the seed lab and print how to explore it.
lab: build-release
	$(RELEASE_BIN) lab up --topology $(TOPOLOGY)

lab-down:
	@if [ -x $(RELEASE_BIN) ]; then $(RELEASE_BIN) lab down; fi

## make test: install, lint, run every test tier (unit, privileged netns, scenarios).
test: setup
	bash scripts/test.sh

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench: setup
	bash scripts/bench.sh

## make bench-datapath: datapath figures (root; builds its own namespaces, ~5 min).
bench-datapath: setup
	$(CARGO) bench -p fibril-datapath --bench datapath

fuzz: setup
	bash scripts/fuzz.sh

clean:
	$(CARGO) clean
