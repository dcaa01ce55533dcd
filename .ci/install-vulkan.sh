#!/usr/bin/env bash
# Makes sure a Vulkan driver is there. A machine whose GPU driver already provides Vulkan (any
# ICD file, e.g. NVIDIA's nvidia_icd.json, or a device vulkaninfo lists) keeps it, and only the
# Vulkan loader is added if missing; otherwise the software driver (Mesa lavapipe) is installed on
# Debian 12. Mesa 25 from bookworm-backports runs storage-buffer compute 3-4x faster than
# bookworm's 22.3, so backports is enabled by copying this machine's own first Debian stanza (no
# mirror address is written here) with its Suites set to bookworm-backports.
# SASPRUNE_VULKAN_ICD_DIRS (colon-separated) replaces the standard ICD directories (for tests).
set -euo pipefail
if [[ $(id -u) != 0 ]]; then SUDO=sudo; else SUDO=; fi
icd_dirs=${SASPRUNE_VULKAN_ICD_DIRS:-/usr/share/vulkan/icd.d:/etc/vulkan/icd.d:/usr/local/share/vulkan/icd.d}
icds=()
IFS=: read -r -a dirs <<<"$icd_dirs"
for d in "${dirs[@]}"; do
  for f in "$d"/*.json; do [[ -e $f ]] && icds+=("$f"); done
done
for v in ${VK_DRIVER_FILES:-} ${VK_ICD_FILENAMES:-}; do
  IFS=: read -r -a files <<<"$v"
  for f in "${files[@]}"; do [[ -e $f ]] && icds+=("$f"); done
done

loader_present() { ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; }

# Debian 12's own Mesa Vulkan drivers (22.x) as the only ones are upgraded to backports' Mesa 25:
# their lavapipe miscounts hard pruning's selection on long layers (AlexNet's), and is 3-4x slower.
debian12_mesa_only() {
  [[ ${#icds[@]} -gt 0 ]] || return 1
  [[ $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null) == 22.* ]] || return 1
  local f
  for f in "${icds[@]}"; do dpkg -S "$f" 2>/dev/null | grep -q '^mesa-vulkan-drivers' || return 1; done
}
if debian12_mesa_only; then
  echo "the only Vulkan drivers are Debian 12's Mesa 22: upgrading them to Mesa 25 from bookworm-backports"
  icds=()
fi

if [[ ${#icds[@]} -gt 0 ]] || { command -v vulkaninfo >/dev/null && vulkaninfo --summary 2>/dev/null | grep -q deviceName; }; then
  if [[ ${#icds[@]} -gt 0 ]]; then
    echo "a Vulkan driver is already installed (${icds[*]}); not installing the software driver"
  else
    echo "a Vulkan driver is already installed (vulkaninfo lists a device); not installing the software driver"
  fi
  if ! loader_present; then
    echo "installing the Vulkan loader (libvulkan1)"
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libvulkan1
  fi
  exit 0
fi
src=/etc/apt/sources.list.d/debian.sources
bp=/etc/apt/sources.list.d/sasprune-backports.sources
if [[ -f $src && ! -f $bp ]] && grep -q bookworm "$src"; then
  # first stanza = lines up to the first blank line
  awk 'BEGIN{RS=""} NR==1{print; exit}' "$src" \
    | sed -E 's/^Suites:.*/Suites: bookworm-backports/' | $SUDO tee "$bp" >/dev/null
fi
$SUDO apt-get update -qq
if [[ -f $bp ]]; then
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1
else
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1
fi
