#!/usr/bin/env bash
# Runs one container with containerd's `ctr run --rm --cni` on a Fibril node
# through the fibril CNI plugin, with everything private: containerd's root,
# state and socket under DIR, and a private mount namespace in which DIR's
# net.d and bin dirs stand in for ctr's fixed /etc/cni/net.d and /opt/cni/bin.
# The image (localhost/fibril-busybox:test) is an OCI archive built here from
# Debian's busybox-static. When CMD exits, ctr calls CNI DEL (with an empty
# CNI_NETNS), containerd stops, and the mount namespace goes with it.
#
#   scripts/ctr-fibril.sh DIR [--lab LAB] [--node NODE] [--cni-bin-dir D]
#                             [--agent-socket S] [--id ID] -- CMD [ARG...]
#
# Defaults as scripts/podman-fibril.sh (the lab's layout, LAB from FIBRIL_LAB
# or "fibril", NODE k8s-ctr); ID fibril-ctr-<pid>. Exit code: CMD's.
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

IMAGE=localhost/fibril-busybox:test

if [ "${1:-}" = --inner ]; then
  # In the private mount namespace: $2 = DIR, $3 = ID, then CMD.
  DIR=$2; ID=$3; shift 3
  mount --bind "$DIR/net.d" /etc/cni/net.d
  if [ -d /opt/cni/bin ]; then
    mount --bind "$DIR/bin" /opt/cni/bin
  else
    # Only this namespace sees the tmpfs over /opt.
    mount -t tmpfs -o mode=0755 fibril-ctr /opt
    mkdir -p /opt/cni/bin
    mount --bind "$DIR/bin" /opt/cni/bin
  fi
  containerd --config "$DIR/config.toml" >"$DIR/containerd.log" 2>&1 &
  cpid=$!
  C="ctr --address $DIR/containerd.sock --namespace fibril"
  stop() {
    $C task kill --signal SIGKILL "$ID" >/dev/null 2>&1 || true
    $C container rm "$ID" >/dev/null 2>&1 || true
    $C image rm "$IMAGE" >/dev/null 2>&1 || true
    kill "$cpid" 2>/dev/null || true
    wait "$cpid" 2>/dev/null || true
  }
  trap stop EXIT
  for _ in $(seq 100); do
    [ -S "$DIR/containerd.sock" ] && $C version >/dev/null 2>&1 && break
    sleep 0.1
  done
  $C image import --snapshotter native "$DIR/image.tar" >/dev/null
  rc=0
  $C run --rm --cni --snapshotter native "$IMAGE" "$ID" "$@" || rc=$?
  exit $rc
fi

[ $# -ge 1 ] || usage
DIR=$1; shift
LAB=${FIBRIL_LAB:-fibril}
NODE=k8s-ctr
BIN_DIR=
SOCKET=
ID=fibril-ctr-$$
while [ $# -gt 0 ]; do
  case $1 in
    --lab) LAB=$2; shift 2 ;;
    --node) NODE=$2; shift 2 ;;
    --cni-bin-dir) BIN_DIR=$2; shift 2 ;;
    --agent-socket) SOCKET=$2; shift 2 ;;
    --id) ID=$2; shift 2 ;;
    --) shift; break ;;
    *) usage ;;
  esac
done
[ $# -ge 1 ] || usage
BIN_DIR=${BIN_DIR:-/run/fibril/labs/$LAB/bin}
SOCKET=${SOCKET:-/run/fibril/labs/$LAB/nodes/$NODE/agent.sock}
[ -e "$BIN_DIR/fibril-cni" ] || { echo "ctr-fibril: no fibril-cni in $BIN_DIR" >&2; exit 1; }
[ -d /etc/cni/net.d ] || { echo "ctr-fibril: /etc/cni/net.d is needed as a mount point" >&2; exit 1; }
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
mkdir -p "$DIR/net.d" "$DIR/bin" "$DIR/root" "$DIR/state"
ln -sfn "$(readlink -f "$BIN_DIR/fibril-cni")" "$DIR/bin/fibril-cni"

cat >"$DIR/config.toml" <<EOF
version = 2
root = "$DIR/root"
state = "$DIR/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$DIR/containerd.sock"
EOF

cat >"$DIR/net.d/10-fibril.conflist" <<EOF
{"cniVersion":"1.0.0","name":"fibril","plugins":[{"type":"fibril-cni","agentSocket":"$SOCKET"}]}
EOF

# The image: an OCI archive with one uncompressed layer.
rootfs=$DIR/rootfs
rm -rf "$rootfs" "$DIR/oci"
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
cp /bin/busybox "$rootfs/bin/busybox"
for a in $(/bin/busybox --list); do
  [ "$a" = busybox ] || ln -sf busybox "$rootfs/bin/$a"
done
echo 'root:x:0:0:root:/:/bin/sh' >"$rootfs/etc/passwd"
blobs=$DIR/oci/blobs/sha256
mkdir -p "$blobs"
tar -C "$rootfs" -cf "$DIR/layer.tar" .
blob() { # FILE -> stores it, prints "digest size"
  local d s
  d=$(sha256sum "$1" | cut -d' ' -f1)
  s=$(stat -c %s "$1")
  mv "$1" "$blobs/$d"
  echo "$d $s"
}
read -r layer layer_size < <(blob "$DIR/layer.tar")
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$arch" "$layer" >"$DIR/config.json"
read -r config config_size < <(blob "$DIR/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
  "$config" "$config_size" "$layer" "$layer_size" >"$DIR/manifest.json"
read -r manifest manifest_size < <(blob "$DIR/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s","io.containerd.image.name":"%s"}}]}' \
  "$manifest" "$manifest_size" "$IMAGE" "$IMAGE" >"$DIR/oci/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$DIR/oci/oci-layout"
tar -C "$DIR/oci" -cf "$DIR/image.tar" oci-layout index.json blobs

exec unshare --mount --propagation private bash "$0" --inner "$DIR" "$ID" "$@"
