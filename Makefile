# Fibril: the two set-up commands are `make lab` and `make test`.
# Both install what is missing first (scripts/setup.sh is idempotent and quick
# when everything is present).

CARGO ?= cargo
RELEASE_BIN := target/release/fibril
TOPOLOGY ?= seed-3w

.PHONY: all setup build build-release lab lab-down test lint fmt bench bench-datapath bench-cluster fuzz clean

all: build

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --workspace

build-release: setup
	$(CARGO) build --release -p fibril

## make lab: install, build, bring up the seed lab (fabric and cluster), apply
## the seed workloads (webpod Deployment + Service, curl-pod) and print what to try.
## Extra settings: make lab LAB_SETS="--set ipam.mode=kubernetes --set routingMode=native"
LAB_SETS ?=
lab: build-release
	$(RELEASE_BIN) lab up --topology $(TOPOLOGY) $(LAB_SETS)
	$(RELEASE_BIN) apply -f lab/manifests/webpod.yaml -f lab/manifests/curl-pod.yaml
	@for i in 1 2 3 4 5 6 7 8 9 10; do \
	  ip=$$($(RELEASE_BIN) get svc webpod -o jsonpath='{.spec.clusterIP}' 2>/dev/null); \
	  [ -n "$$ip" ] && break; sleep 0.5; done; \
	echo; echo "Try (pods take a few seconds to start):"; \
	echo "  $(RELEASE_BIN) get pods -o wide"; \
	echo "  $(RELEASE_BIN) exec curl-pod -- curl -s $${ip:-<webpod ClusterIP>}"; \
	echo "  $(RELEASE_BIN) dbg status --verbose"; \
	echo "  $(RELEASE_BIN) lab exec router -- tcpdump -i eth1 -nn"; \
	echo "  $(RELEASE_BIN) lab down"

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

## make bench-cluster: control-plane figures on a seed-4w lab (root; ~3 min):
## CNI ADD/DEL latency, pods/s, agent RSS with 1,000 services, lab up/down.
bench-cluster: setup
	$(CARGO) bench -p fibril --bench cluster

fuzz: setup
	bash scripts/fuzz.sh

clean:
	$(CARGO) clean
