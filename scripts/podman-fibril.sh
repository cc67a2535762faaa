#!/usr/bin/env bash
# Writes a private podman configuration that runs containers on a Fibril node
# through the fibril CNI plugin, and prints how to use it. Nothing global is
# touched: podman reads only these files (CONTAINERS_CONF,
# CONTAINERS_STORAGE_CONF) and keeps its state under DIR.
#
#   scripts/podman-fibril.sh DIR [--lab LAB] [--node NODE]
#                                [--cni-bin-dir D] [--agent-socket S] [--image]
#
# Defaults: the lab's layout (/run/fibril/labs/LAB/bin holds the fibril-cni
# link, /run/fibril/labs/LAB/nodes/NODE/agent.sock the node agent), LAB from
# FIBRIL_LAB or "fibril", NODE k8s-ctr. On a real host give the plugin dir
# (where fibril-cni is) and the agent socket (default /run/fibril/agent.sock).
# --image also builds localhost/fibril-busybox:test from Debian's
# busybox-static (/bin/busybox and a link per applet).
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] || usage
DIR=$1; shift
LAB=${FIBRIL_LAB:-fibril}
NODE=k8s-ctr
BIN_DIR=
SOCKET=
IMAGE=0
while [ $# -gt 0 ]; do
  case $1 in
    --lab) LAB=$2; shift 2 ;;
    --node) NODE=$2; shift 2 ;;
    --cni-bin-dir) BIN_DIR=$2; shift 2 ;;
    --agent-socket) SOCKET=$2; shift 2 ;;
    --image) IMAGE=1; shift ;;
    *) usage ;;
  esac
done
BIN_DIR=${BIN_DIR:-/run/fibril/labs/$LAB/bin}
SOCKET=${SOCKET:-/run/fibril/labs/$LAB/nodes/$NODE/agent.sock}

[ -e "$BIN_DIR/fibril-cni" ] || { echo "podman-fibril: no fibril-cni in $BIN_DIR" >&2; exit 1; }
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
mkdir -p "$DIR/net.d" "$DIR/root" "$DIR/runroot" "$DIR/tmp"

# runc, not crun (hybrid cgroups); cgroupfs and file events (no systemd);
# default_ulimits because raising limits past the caller's hard limits
# (setrlimit) is not permitted in restricted environments; file locks so
# that the SHM lock segment of another podman is not shared.
cat >"$DIR/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
tmp_dir = "$DIR/tmp"

[network]
network_backend = "cni"
cni_plugin_dirs = ["$BIN_DIR"]
network_config_dir = "$DIR/net.d"
default_network = "fibril"
EOF

cat >"$DIR/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$DIR/root"
runroot = "$DIR/runroot"
EOF

cat >"$DIR/net.d/fibril.conflist" <<EOF
{"cniVersion":"1.0.0","name":"fibril","plugins":[{"type":"fibril-cni","agentSocket":"$SOCKET"}]}
EOF

PODMAN="env CONTAINERS_CONF=$DIR/containers.conf CONTAINERS_STORAGE_CONF=$DIR/storage.conf podman --root $DIR/root --runroot $DIR/runroot"

if [ "$IMAGE" = 1 ]; then
  rootfs=$DIR/rootfs
  rm -rf "$rootfs"
  mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
  cp /bin/busybox "$rootfs/bin/busybox"
  for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -sf busybox "$rootfs/bin/$a"
  done
  echo 'root:x:0:0:root:/:/bin/sh' >"$rootfs/etc/passwd"
  tar -C "$rootfs" -cf "$DIR/rootfs.tar" .
  $PODMAN import --change 'CMD ["/bin/sh"]' "$DIR/rootfs.tar" localhost/fibril-busybox:test >/dev/null
  echo "podman-fibril: built image localhost/fibril-busybox:test"
fi

cat <<EOF
podman-fibril: config in $DIR (plugin dir $BIN_DIR, agent $SOCKET)
  alias podman-fibril='$PODMAN'
  podman-fibril run -d --name c1 --network fibril localhost/fibril-busybox:test sleep 600
  podman-fibril exec c1 ip -4 addr show eth0
  podman-fibril rm -f -t 0 c1
Clean up: podman-fibril rm -af -t 0; podman-fibril system reset -f; rm -rf $DIR
EOF
