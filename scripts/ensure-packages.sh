#!/usr/bin/env bash
# Installs the Debian packages dcres needs (as root), or says which apt-get line to run and fails.
set -euo pipefail
pkgs=(linux-image-cloud-amd64 busybox-static gcc libc6-dev binutils libunicorn2 libunicorn-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "dcres: missing Debian packages; run: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
echo "dcres: installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2 || true
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
