#!/usr/bin/env bash
# Prints the path of a Deno 2.9 to use: one on PATH, else one installed from npm into .deno/.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
want_major_minor="2.9"
if command -v deno >/dev/null 2>&1 && deno --version 2>/dev/null | head -1 | grep -q "^deno ${want_major_minor}\."; then
  command -v deno
  exit 0
fi
local_deno="$root/.deno/node_modules/.bin/deno"
if [ -x "$local_deno" ] && "$local_deno" --version >/dev/null 2>&1; then
  echo "$local_deno"
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "dcres: Deno ${want_major_minor} is not on PATH and npm is missing to install it; install Node.js/npm or Deno ${want_major_minor}" >&2
  exit 1
fi
echo "dcres: installing Deno ${want_major_minor} from npm into .deno/ (once)" >&2
mkdir -p "$root/.deno"
npm install --silent --no-save --prefix "$root/.deno" "deno@~${want_major_minor}.0" >&2
"$local_deno" --version >/dev/null
echo "$local_deno"
