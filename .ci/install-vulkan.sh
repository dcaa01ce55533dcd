#!/usr/bin/env bash
# Installs the software Vulkan driver (Mesa lavapipe) on Debian 12 when no Vulkan ICD is present.
# Mesa 25 from bookworm-backports runs storage-buffer compute 3-4x faster than bookworm's 22.3, so
# backports is enabled by copying this machine's own first Debian stanza (no mirror address is
# written here) with its Suites set to bookworm-backports.
set -euo pipefail
if ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  echo "software Vulkan driver already installed"; exit 0
fi
if [[ $(id -u) != 0 ]]; then SUDO=sudo; else SUDO=; fi
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
