#!/usr/bin/env bash
# Make Fashion-MNIST (IDX files) available: $CONDCONV_NAS_DATA or Debian's dataset-fashion-mnist.
# Nothing is downloaded from the web; the Debian package comes from the system's package mirror.
set -euo pipefail
for dir in "${CONDCONV_NAS_DATA:-}" "${CONDCONV_NAS_DATA:-}/fashion-mnist" /usr/share/datasets/fashion-mnist; do
  [ -n "$dir" ] && [ -f "$dir/train-images-idx3-ubyte.gz" ] && exit 0
done
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
if command -v apt-get >/dev/null; then
  echo "installing Debian's dataset-fashion-mnist ..." >&2
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
    && exit 0
fi
echo "Fashion-MNIST not found: install Debian's dataset-fashion-mnist, or put the four IDX .gz files" \
     "in a folder and set CONDCONV_NAS_DATA to it" >&2
exit 2
