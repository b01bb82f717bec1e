#!/usr/bin/env bash
# Run kb's whole test suite, installing what it needs first (model files, Debian packages for
# the test documents). Unit tests, then integration tests against real servers on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
start=$(date +%s)
step() { echo "== $* ($(( $(date +%s) - start )) s)"; }

# Services this script starts (a private redis-server) are stopped on exit, however the script
# ends. Cleanup never decides the outcome: the script exits with the status it had, non-zero
# exactly when a step failed.
REDIS_DIR=""
# Stop the process whose pid is in file $1 and wait for it to be gone: SIGTERM, up to 10 s, then
# SIGKILL. Removing its directory while it still writes there would fail ("Directory not empty").
stop_pidfile() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "== $1: pid $pid still running after 10 s, SIGKILL" >&2
  kill -9 "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
}
cleanup() {
  local rc=$?
  set +e
  if [ -n "$REDIS_DIR" ]; then
    stop_pidfile "$REDIS_DIR/redis.pid"
    rm -rf "$REDIS_DIR" 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT

step "model files"
bash scripts/fetch-models.sh --llm "$KB_MODELS_DIR"
export KB_TEST_MODELS_DIR="$KB_MODELS_DIR"

step "test documents"
bash scripts/test-fixtures.sh test-artifacts/fixtures
export KB_TEST_FIXTURES="$PWD/test-artifacts/fixtures"

step "format"
cargo fmt --all -- --check

step "layout (no import cycle between modules, no source file over 600 lines)"
python3 scripts/check-layout.py

step "build"
bash scripts/build-deps.sh
cargo build --workspace --tests --bins

step "redis-server (for the Redis answer cache tests)"
if ! command -v redis-server >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server >/dev/null; }
fi
# A private server on a free loopback port, in a temporary directory, stopped on exit.
REDIS_DIR=$(mktemp -d)
REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$REDIS_DIR" --save "" --appendonly no \
  --daemonize yes --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log"
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  echo "redis-server did not start:" >&2
  cat "$REDIS_DIR/redis.log" >&2 || true
  exit 1
fi
# Set: the Redis tests run, and fail if this server cannot be reached.
export KB_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"

step "tests"
cargo test --workspace --no-fail-fast -- --test-threads=2

step "browser tests (chromium + playwright-core)"
if ! command -v chromium >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; }
fi
(cd tests/web && npm ci --no-audit --no-fund --silent)
KB_BIN="$CARGO_TARGET_DIR/debug/kb" KB_MODELS_DIR="$KB_MODELS_DIR" node --test tests/web/

step "OpenAI client tests (the official openai package)"
# A virtual environment outside the clone, kept between runs like the cargo target directory.
VENV="${HOME:-/root}/.cache/kb-venv"
if ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    # Debian's python3 needs python3-venv (ensurepip) for this.
    rm -rf "$VENV"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >/dev/null \
      || { $SUDO apt-get update -q >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >/dev/null; }
    python3 -m venv "$VENV"
  fi
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check openai
KB_BIN="$CARGO_TARGET_DIR/debug/kb" KB_MODELS_DIR="$KB_MODELS_DIR" \
  "$VENV/bin/python" -m unittest discover -s tests/openai_client -v

step "all done"
