#!/usr/bin/env bash
# Installs the Debian packages dcres needs (as root), or says which apt-get line to run and fails.
# With "emu": only what the emulated CPU needs (the demo on a host without /dev/kvm).
set -euo pipefail
emu_pkgs=(gcc libc6-dev libunicorn2 libunicorn-dev)
if [ "${1:-}" = emu ]; then
  pkgs=("${emu_pkgs[@]}")
else
  pkgs=(linux-image-cloud-amd64 busybox-static binutils strace systemd logrotate etcd-server "${emu_pkgs[@]}")
fi
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
