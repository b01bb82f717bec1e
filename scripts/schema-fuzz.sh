#!/usr/bin/env bash
# Schema-driven fuzzing of a real `kb serve` with schemathesis (from PyPI): every operation of
# /openapi.json with generated valid and invalid input, checking that nothing answers 5xx and
# that every response matches the schema documented for it. Bounded; not part of CI.
# Usage: bash scripts/schema-fuzz.sh [MAX_EXAMPLES per operation (default 30)]
# Needs a built kb (scripts/test.sh or cargo build) and the models (scripts/fetch-models.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
N="${1:-30}"
VENV="${HOME:-/root}/.cache/kb-fuzz-venv"
[ -x "$VENV/bin/schemathesis" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q schemathesis; }
BIN="$CARGO_TARGET_DIR/debug/kb"
TMP=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$TMP"' EXIT
env -u KB_CONFIG KB_MODELS_DIR="$KB_MODELS_DIR" KB_LOG=warn "$BIN" serve --addr 127.0.0.1:0 --data-dir "$TMP/data" >"$TMP/out" 2>"$TMP/log" &
PID=$!
for _ in $(seq 1 600); do grep -q "kb listening" "$TMP/out" && break; sleep 0.1; done
BASE=$(sed -n 's/^kb listening on //p' "$TMP/out")
# Something to find: one document in collection `docs` (the generated requests name others too).
printf '# Fuzz\n\nThe fuzzing harness uploads one note so searches have something to find.\n' >"$TMP/note.md"
curl -sf -F "file=@$TMP/note.md" "$BASE/v1/collections/docs/documents" >/dev/null
sleep 3
set +e
"$VENV/bin/schemathesis" run "$BASE/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$N" --request-timeout 30 --suppress-health-check all 2>&1 | tee "$TMP/report.txt"
rc=${PIPESTATUS[0]}
set -e
echo "server log: $(grep -c ERROR "$TMP/log" || true) ERROR lines"
grep ERROR "$TMP/log" | head -20 || true
exit "$rc"
