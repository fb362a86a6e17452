#!/usr/bin/env bash
# The README's test command: set up (venv, package with dev extras, redis-server from Debian
# packages if missing) and run the whole test suite, Redis tests included, against the compiled
# hot path (the install compiles it with mypyc, and here must: a failed compile fails the run);
# then the suites that exercise the core (primitives, interceptors, the Stageflow integration,
# the backend conformance suite, the build's own tests) again against its pure-Python sources
# (STAGEFLOW_PLUS_PURE=1). The rest (benchmarks' tests, real clients, Redis processes, metrics,
# examples) runs the same core code through those layers and is left to the compiled pass, which
# keeps CI under ten minutes on two cores. Extra arguments go to pytest; arguments that name
# tests replace both passes' selection. STAGEFLOW_PLUS_VENV chooses the venv (default: .venv).
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
STAGEFLOW_PLUS_REQUIRE_COMPILED=1 \
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]' \
  2> >(grep -v "^WARNING: Location '" >&2)
echo "scripts/test.sh: compiled core" >&2
STAGEFLOW_PLUS_REQUIRE_COMPILED=1 "$venv/bin/python" -m pytest "$@"
pure_suites=(tests/primitives tests/interceptors tests/stageflow tests/backends/test_conformance.py
             tests/test_accel.py)
for arg in "$@"; do
  case "$arg" in -*) ;; *) pure_suites=() ;; esac  # the caller named what to run
done
echo "scripts/test.sh: pure-Python core (STAGEFLOW_PLUS_PURE=1)" >&2
STAGEFLOW_PLUS_PURE=1 exec "$venv/bin/python" -m pytest "${pure_suites[@]}" "$@"
