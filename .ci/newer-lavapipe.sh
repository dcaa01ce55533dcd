#!/usr/bin/env bash
# Builds DIR (default target/newer-lavapipe): a minimal Debian unstable tree holding Mesa's
# current software Vulkan driver, whose lavapipe (Mesa 26.2 and later) offers cooperative
# matrices (8x8x8, f16 inputs, f32 sums) that Debian 12's Mesa 25.0 lacks. Nothing is installed
# on the machine itself besides debootstrap: the tests that need cooperative matrices run again
# with DIR's own loader, glibc and driver when SASPRUNE_LAVAPIPE_ROOT=DIR is set
# (tests/mixed_precision.rs, `cooperative_tiles`), so CI checks the cooperative-matrix kernels
# against the f64 reference without a GPU:
#   bash .ci/newer-lavapipe.sh target/newer-lavapipe
#   SASPRUNE_LAVAPIPE_ROOT=$PWD/target/newer-lavapipe cargo test --release --test mixed_precision cooperative
# The mirror is this machine's own (its first Debian stanza's URIs); no address is written here.
# Exits 0 with the tree already there; needs root (or sudo) and the Debian mirror otherwise.
# Debian unstable moves: the Mesa a build gets is the one the mirror has that day (the script
# prints it); the tests check that it offers cooperative matrices.
set -euo pipefail
dir=${1:-target/newer-lavapipe}
icd=$dir/usr/share/vulkan/icd.d/lvp_icd.json
held() { dpkg-query --admindir="$dir/var/lib/dpkg" -W -f='mesa-vulkan-drivers ${Version}' mesa-vulkan-drivers; }
if [[ -f $icd && -x $dir/lib64/ld-linux-x86-64.so.2 ]]; then
  echo "$dir already holds $(held)"
  exit 0
fi
if [[ $(id -u) != 0 ]]; then SUDO=sudo; else SUDO=; fi
if ! command -v debootstrap >/dev/null; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
fi
mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
if [[ -z $mirror ]]; then
  mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}
# (the tree is root's, as debootstrap makes it: removing it takes root too)
$SUDO rm -rf "$dir.part"
mkdir -p "$(dirname "$dir")"
$SUDO timeout 900 debootstrap --variant=minbase --include=mesa-vulkan-drivers,libvulkan1 sid "$dir.part" "$mirror" \
  >"$dir.log" 2>&1 || { echo "debootstrap failed (log: $dir.log)" >&2; tail -5 "$dir.log" >&2; exit 1; }
$SUDO rm -rf "$dir"
$SUDO mv "$dir.part" "$dir"
echo "$dir holds $(held)"
