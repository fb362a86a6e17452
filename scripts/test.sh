#!/usr/bin/env bash
# The README's test command: set up (venv, package with dev extras, redis-server from Debian
# packages if missing) and run the whole test suite, Redis tests included. Extra arguments go
# to pytest. STAGEFLOW_PLUS_VENV chooses the venv directory (default: .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${STAGEFLOW_PLUS_VENV:-.venv}"

if ! command -v redis-server >/dev/null 2>&1; then
  echo "scripts/test.sh: installing redis-server from Debian packages" >&2
  sudo_cmd=()
  if [ "$(id -u)" != 0 ]; then sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# pip's notes about unreachable local mirrors are noise here; real errors still show
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]' \
  2> >(grep -v "^WARNING: Location '" >&2)
exec "$venv/bin/python" -m pytest "$@"
