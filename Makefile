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
	@echo "waiting for the pods to run..."; for i in $$(seq 90); do \
	  $(RELEASE_BIN) get pods -A 2>/dev/null | tail -n +2 | awk 'BEGIN{bad=1} \
	    {bad=0; split($$3,r,"/")} $$4!="Running" || r[1]!=r[2] {bad=1; exit} END{exit bad}' \
	  && break; sleep 1; done
	@$(RELEASE_BIN) get pods -A -o wide
	@echo; echo "Try:"; \
	echo "  $(RELEASE_BIN) exec curl-pod -- curl -s webpod          # through cluster DNS and the ClusterIP"; \
	echo "  $(RELEASE_BIN) get ciliumnodes; $(RELEASE_BIN) get ciliumendpoints"; \
	echo "  $(RELEASE_BIN) dbg status --verbose; $(RELEASE_BIN) dbg service list"; \
	echo "  $(RELEASE_BIN) observe --pod curl-pod --last 20"; \
	echo "  $(RELEASE_BIN) lab exec router -- tcpdump -i eth1 -nn"; \
	echo "  $(RELEASE_BIN) lab upgrade --set routingMode=tunnel --set tunnelProtocol=geneve"; \
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
