#!/usr/bin/env bash
# Installs what Fibril needs on a fresh Debian machine, idempotently.
# Fast when everything is present: only missing packages trigger apt.
set -euo pipefail

PKGS=(
  clang llvm libbpf-dev bpftool linux-libc-dev
  iproute2 nftables tcpdump tshark iputils-ping
  etcd-server etcd-client protobuf-compiler libprotobuf-dev
  iperf3 sockperf dnsutils busybox-static curl netcat-openbsd dnsmasq-base
  podman runc containerd  # crates/fibril/tests/runtime_cni.rs: podman (CNI backend) and ctr run --cni drive fibril-cni
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: must run as root to install packages" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: Debian packages present"
fi

# etcd-server's package starts a system etcd on localhost:2379; Fibril starts its
# own etcd processes with private data dirs and never relies on that one.
if command -v cargo >/dev/null 2>&1; then
  :
else
  echo "setup: cargo not found; Fibril needs the machine's stable Rust toolchain" >&2
  exit 1
fi
