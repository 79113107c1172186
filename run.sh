#!/usr/bin/env bash
# The README's two commands, each doing all the set-up on a fresh machine:
#   ./run.sh demo   — install, start a local stack if none runs, run the guide's examples
#   ./run.sh test   — install (with test tools), then run the whole test suite
# Also: ./run.sh check (CI's fast lane)   ./run.sh bench [--quick]   ./run.sh up [...]
#       (anything else is passed to session-broker)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.installed-$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)-$1"
  if [ ! -f "$stamp" ]; then
    echo "==> installing session-broker[$1] into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # the versions the suite passed with (constraints.txt); a new release is tried on purpose
    "$VENV/bin/python" -m pip install -q -e ".[$1]" -c constraints.txt
    touch "$stamp"
  fi
}

# System tools some tests drive: Chromium (browser tests), docker-compose (compose file
# validation, no engine needed), iproute2 (network namespaces for partition tests).
system_tools() {
  local missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v redis-server >/dev/null || missing+=(redis-server)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing system packages: ${missing[*]}"
    if [ "$(id -u)" -eq 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
  fi
}

cmd=${1:-help}
shift || true
case "$cmd" in
  demo)
    setup demo
    exec "$VENV/bin/session-broker" demo "$@"
    ;;
  check)
    # the fast lane: lint, format, types, import contracts, unit and Lua tests (about a minute)
    setup test
    system_tools  # the compose checks need docker-compose
    "$VENV/bin/ruff" check session_broker tasks tests benchmarks
    "$VENV/bin/ruff" format --check -q session_broker tasks tests benchmarks
    "$VENV/bin/mypy"
    "$VENV/bin/lint-imports" --no-cache
    exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/unit tests/lua "$@"
    ;;
  test)
    setup test
    system_tools
    # the slowest tests are listed at the end: CI runs near its 20-minute limit
    exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider --durations=20 "$@"
    ;;
  bench)
    setup bench
    exec "$VENV/bin/python" benchmarks/run.py "$@"
    ;;
  help|-h|--help)
    sed -n '2,7p' "$0"
    ;;
  *)
    setup test
    exec "$VENV/bin/session-broker" "$cmd" "$@"
    ;;
esac
