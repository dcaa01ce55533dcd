#!/usr/bin/env bash
# Puts CIFAR-10 (official binary layout) into data/cifar-10-batches-bin/ unless it is there:
# from this project's shared workspace when present (../shared/data/cifar10.sh, offline),
# otherwise the official tarball from the University of Toronto.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=$root/data
if [[ -f $dest/cifar-10-batches-bin/test_batch.bin ]]; then
  echo "CIFAR-10 is in $dest/cifar-10-batches-bin"; exit 0
fi
if [[ -x $root/../shared/data/cifar10.sh ]]; then
  exec bash "$root/../shared/data/cifar10.sh" "$dest"
fi
url=https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz
echo "downloading $url"
curl -fL "$url" | tar -xz -C "$dest"
echo "CIFAR-10 is in $dest/cifar-10-batches-bin"
