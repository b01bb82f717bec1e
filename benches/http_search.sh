#!/usr/bin/env bash
# Whole-system benchmark of a real `kb serve` on 127.0.0.1 (random port, temp data dir):
#   1. ingestion end to end: upload every .html/.htm/.pdf/.md/.txt file under DIR (recursively)
#      into collection `bench`, one file per request, and wait until all their jobs are done:
#      documents/s and MB/s from the first upload to the last finished job;
#   2. search latency: N sequential POST /v1/search (curl's time_total), cycling through a few
#      queries, after the background index build; each is followed by a GET /healthz, the
#      baseline (same client, same moments), and reported as a ratio to it.
#
# Usage: bash benches/http_search.sh [DIR]          (default: test-artifacts/fixtures)
# Env:   KB_BIN                  kb binary (default $CARGO_TARGET_DIR/debug/kb,
#                                CARGO_TARGET_DIR defaulting to ~/.cache/kb-target)
#        KB_MODELS_DIR           model directory (default ./models)
#        KB_BENCH_REQUESTS       requests per figure (200)
#        KB_BENCH_MODE           hybrid | dense | sparse (default: the server's, hybrid)
#        KB_BENCH_QUERIES_FILE   queries, one per line (default: a few about the fixtures)
#        KB_BENCH_TIMEOUT        seconds allowed for ingestion (3600)
#        KB_BENCH_OPTIMIZE_WAIT  seconds to wait for the background index build (600)
#        KB_BENCH_KEEP=1         keep the temp dir (server log, raw timings)
#        KB_BENCH_PIN=0          do not pin curl to one CPU (see below)
# Other KB_* variables reach the server as configuration (e.g. KB_JOBS__WORKERS=1).
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(cd "${1:-$ROOT/test-artifacts/fixtures}" && pwd)
BIN="${KB_BIN:-${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/kb-target}/debug/kb}"
MODELS="${KB_MODELS_DIR:-$ROOT/models}"
REQUESTS="${KB_BENCH_REQUESTS:-200}"
TIMEOUT="${KB_BENCH_TIMEOUT:-3600}"
OPT_WAIT="${KB_BENCH_OPTIMIZE_WAIT:-600}"
QUIET_SECS=5 # store.optimize_after_secs for the server: build the index soon after ingestion
COLLECTION=bench

die() {
  echo "http_search: $*" >&2
  exit 1
}
[ -x "$BIN" ] || die "no kb binary at $BIN (cargo build --bin kb, or set KB_BIN)"
[ -f "$MODELS/all-MiniLM-L6-v2/model.safetensors" ] ||
  die "model files missing in $MODELS (bash scripts/fetch-models.sh, or set KB_MODELS_DIR)"
MODELS=$(cd "$MODELS" && pwd)
command -v curl >/dev/null || die "curl is required"
[[ "$REQUESTS" =~ ^[1-9][0-9]*$ ]] || die "KB_BENCH_REQUESTS must be a positive number"

now() { date +%s.%N; }
secs_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kb-http-bench.XXXXXX")
PID=""
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$PID" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  if [ "${KB_BENCH_KEEP:-0}" = 1 ]; then
    echo "http_search: kept $TMP" >&2
  else
    rm -rf "$TMP"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# Start the server. Variables of this script and of the tests would be unknown configuration
# keys to kb (it reads KB_* as configuration): drop them. KB_LOG=info: the index build is
# detected from the log.
unset_args=()
for v in $(compgen -e); do
  case "$v" in
    KB_BIN | KB_BENCH_* | KB_TEST_* | KB_CONFIG) unset_args+=(-u "$v") ;;
  esac
done
mkdir -p "$TMP/run"
(
  cd "$TMP/run"
  exec env ${unset_args[@]+"${unset_args[@]}"} \
    KB_MODELS_DIR="$MODELS" KB_LOG=info KB_STORE__OPTIMIZE_AFTER_SECS="$QUIET_SECS" \
    "$BIN" serve --addr 127.0.0.1:0 --data-dir "$TMP/data"
) >"$TMP/stdout" 2>"$TMP/server.log" </dev/null &
PID=$!

BASE=""
deadline=$(($(date +%s) + 180))
while [ -z "$BASE" ]; do
  if ! kill -0 "$PID" 2>/dev/null; then
    tail -n 20 "$TMP/server.log" >&2
    die "kb serve exited during start-up"
  fi
  [ "$(date +%s)" -lt "$deadline" ] || die "kb serve did not start within 180 s"
  BASE=$(sed -n 's|^kb listening on \(http://127\.0\.0\.1:[0-9][0-9]*\).*|\1|p' "$TMP/stdout" |
    head -n 1 || true)
  [ -n "$BASE" ] || sleep 0.2
done
echo "http_search: kb serving on $BASE (data in $TMP/data)" >&2

# ---------------------------------------------------------------------------------------------
# Ingestion: upload, then wait for every job.
mapfile -t FILES < <(find "$DIR" -type f \( -iname '*.html' -o -iname '*.htm' -o -iname '*.pdf' \
  -o -iname '*.md' -o -iname '*.txt' \) | sort)
[ "${#FILES[@]}" -gt 0 ] || die "no .html/.htm/.pdf/.md/.txt files under $DIR"
echo "http_search: uploading ${#FILES[@]} files from $DIR" >&2

JOBS=()
bytes=0
rejected=0
duplicates=0
t_start=$(now)
for f in "${FILES[@]}"; do
  rel=${f#"$DIR"/}
  # Unique, path-free names: python-3.11/library/gzip.html -> python-3.11_library_gzip.html
  name=$(printf '%s' "$rel" | tr -c 'A-Za-z0-9._-' '_')
  code=$(curl -sS -o "$TMP/resp" -w '%{http_code}' -F "file=@\"$f\";filename=$name" \
    "$BASE/v1/collections/$COLLECTION/documents") || code=000
  if [ "$code" != 202 ]; then
    rejected=$((rejected + 1))
    echo "  rejected ($code): $rel $(head -c 300 "$TMP/resp" 2>/dev/null || true)" >&2
    continue
  fi
  if grep -q '"duplicate":true' "$TMP/resp"; then
    duplicates=$((duplicates + 1))
    continue
  fi
  job=$(grep -o '"job_id":"[^"]*"' "$TMP/resp" | head -n 1 | cut -d'"' -f4 || true)
  [ -n "$job" ] || die "no job_id in the upload response: $(head -c 300 "$TMP/resp")"
  JOBS+=("$job")
  bytes=$((bytes + $(stat -c %s "$f")))
done
[ "${#JOBS[@]}" -gt 0 ] || die "no document was accepted"
t_uploaded=$(now)

# One listing per poll: every document is `processing` until it is `ready` or `failed`.
docs=${#JOBS[@]}
done_n=0
failed_n=0
deadline=$(($(date +%s) + TIMEOUT))
while :; do
  statuses=$(curl -sS "$BASE/v1/collections/$COLLECTION/documents" |
    grep -o '"status":"[^"]*"' | cut -d'"' -f4 || true)
  done_n=$(grep -cx ready <<<"$statuses" || true)
  failed_n=$(grep -cx failed <<<"$statuses" || true)
  [ $((done_n + failed_n)) -lt "$docs" ] || break
  kill -0 "$PID" 2>/dev/null || die "kb serve died during ingestion (see $TMP/server.log)"
  [ "$(date +%s)" -lt "$deadline" ] || die "ingestion not finished after $TIMEOUT s ($done_n of $docs done)"
  sleep 0.2
done
t_done=$(now)
if [ "$failed_n" -gt 0 ]; then
  curl -sS "$BASE/v1/collections/$COLLECTION/documents" | grep -o '"error":"[^"]*"' |
    head -n 5 | sed 's/^/  failed: /' >&2 || true
fi
optimized_before=$(grep -c 'index optimised' "$TMP/server.log" || true)
info=$(curl -sS "$BASE/v1/collections/$COLLECTION" || true)
chunks=$(printf '%s' "$info" | grep -o '"chunks":[0-9]*' | head -n 1 | cut -d: -f2 || true)
points=$(printf '%s' "$info" | grep -o '"points":[0-9]*' | head -n 1 | cut -d: -f2 || true)

# The server builds the HNSW index once the collection has been quiet for QUIET_SECS: measure
# searches on the built index, as a long-running server would serve them.
echo "http_search: waiting for the background index build (up to $OPT_WAIT s)" >&2
optimized=no
deadline=$(($(date +%s) + OPT_WAIT))
while [ "$(date +%s)" -lt "$deadline" ]; do
  n=$(grep -c 'index optimised' "$TMP/server.log" || true)
  if [ "${n:-0}" -gt "${optimized_before:-0}" ]; then
    optimized=yes
    break
  fi
  kill -0 "$PID" 2>/dev/null || die "kb serve died (see $TMP/server.log)"
  sleep 1
done

# ---------------------------------------------------------------------------------------------
# Latency: search and healthz interleaved, sequential, one curl process per request.
QUERIES=(
  "How do I compress data in memory with gzip?"
  "gzip.open text mode encoding"
  "What does the shift builtin do?"
  "bash parameter expansion with a default value"
  "exit status of a pipeline"
  "how are positional parameters set"
)
if [ -n "${KB_BENCH_QUERIES_FILE:-}" ]; then
  mapfile -t QUERIES < <(grep -v '^[[:space:]]*$' "$KB_BENCH_QUERIES_FILE")
  [ "${#QUERIES[@]}" -gt 0 ] || die "no queries in $KB_BENCH_QUERIES_FILE"
fi
json_escape() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr -d '\n\r\t'; }
mode_field=""
[ -z "${KB_BENCH_MODE:-}" ] || mode_field=",\"mode\":\"$(json_escape "$KB_BENCH_MODE")\""
BODIES=()
for q in "${QUERIES[@]}"; do
  BODIES+=("{\"query\":\"$(json_escape "$q")\",\"collection\":\"$COLLECTION\"$mode_field}")
done
NQ=${#BODIES[@]}

# curl runs pinned to the CPU with the finest clock: on some VMs a vCPU's clock advances in
# 4-20 ms steps, or the vCPUs' clocks differ by milliseconds, and a curl that runs there or
# migrates mid-request reports noise (often 0) as time_total.
PIN=()
CLOCKS=""
if [ "${KB_BENCH_PIN:-1}" != 0 ] && command -v taskset >/dev/null; then
  best=""
  best_ticks=-1
  for cpu in $(taskset -pc $$ | sed 's/.*: *//' | tr ',' '\n' |
    while IFS=- read -r a b; do seq "$a" "${b:-$a}"; done); do
    # How often the clock changes in 2000 reads (a few ms): ~2000 if fine, ~1 if coarse.
    ticks=$(taskset -c "$cpu" bash -c 'n=0; a=$EPOCHREALTIME
      for i in {1..2000}; do b=$EPOCHREALTIME; [ "$b" = "$a" ] || { n=$((n + 1)); a=$b; }; done
      echo $n' 2>/dev/null || echo 0)
    CLOCKS="$CLOCKS CPU $cpu: $ticks/2000 clock ticks;"
    if [ "$ticks" -gt "$best_ticks" ]; then
      best=$cpu
      best_ticks=$ticks
    fi
  done
  [ -z "$best" ] || PIN=(taskset -c "$best")
fi

# Each prints "HTTP-status seconds" ("000 ..." if the request failed).
search() {
  local out
  out=$(${PIN[@]+"${PIN[@]}"} curl -sS -o /dev/null -w '%{http_code} %{time_total}' -H 'Content-Type: application/json' \
    --data-binary "$1" "$BASE/v1/search") || true
  echo "${out:-000 0}"
}
health() {
  local out
  out=$(${PIN[@]+"${PIN[@]}"} curl -sS -o /dev/null -w '%{http_code} %{time_total}' \
    "$BASE/healthz") || true
  echo "${out:-000 0}"
}

for i in $(seq 0 $((NQ < 5 ? 4 : NQ - 1))); do # warm-up, not measured
  search "${BODIES[$((i % NQ))]}" >/dev/null
  health >/dev/null
done
echo "http_search: measuring $REQUESTS searches and $REQUESTS health checks" >&2
: >"$TMP/search.txt"
: >"$TMP/health.txt"
for i in $(seq 0 $((REQUESTS - 1))); do
  q=$((i % NQ))
  echo "$q $(search "${BODIES[$q]}")" >>"$TMP/search.txt"
  echo "- $(health)" >>"$TMP/health.txt"
done

# lat_stats FILE [QUERY-INDEX] -> "count p50_ms p99_ms errors" (nearest-rank percentiles)
lat_stats() {
  local errors
  errors=$(awk -v q="${2:-}" '(q == "" || $1 == q) && $2 != 200' "$1" | wc -l)
  awk -v q="${2:-}" '(q == "" || $1 == q) && $2 == 200 { printf "%.3f\n", $3 * 1000 }' "$1" |
    sort -n | awk -v errs="$errors" '
      { v[NR] = $1 }
      END {
        if (NR == 0) { printf "0 - - %d\n", errs; exit }
        r50 = int(NR * 0.50); if (r50 < NR * 0.50) r50++; if (r50 < 1) r50 = 1
        r99 = int(NR * 0.99); if (r99 < NR * 0.99) r99++; if (r99 < 1) r99 = 1
        printf "%d %.2f %.2f %d\n", NR, v[r50], v[r99], errs
      }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0 && a != "-") printf "%.1fx", a / b; else print "-" }'; }

read -r h_n h_p50 h_p99 h_err < <(lat_stats "$TMP/health.txt")
read -r s_n s_p50 s_p99 s_err < <(lat_stats "$TMP/search.txt")

# ---------------------------------------------------------------------------------------------
# Report
ingest_secs=$(secs_between "$t_start" "$t_done")
upload_secs=$(secs_between "$t_start" "$t_uploaded")
echo
echo "== kb HTTP bench: $DIR -> collection $COLLECTION ($BIN)"
echo
echo "== ingestion, first upload -> all jobs done (MB = 10^6 bytes uploaded)"
printf '%-22s %s\n' "documents" "$docs ($done_n done, $failed_n failed; $rejected rejected, $duplicates duplicates not counted)"
printf '%-22s %.2f MB\n' "uploaded" "$(awk -v b="$bytes" 'BEGIN { print b / 1e6 }')"
printf '%-22s %s s (uploads alone: %s s)\n' "elapsed" "$ingest_secs" "$upload_secs"
printf '%-22s %s docs/s, %s MB/s\n' "throughput" \
  "$(awk -v n="$docs" -v s="$ingest_secs" 'BEGIN { printf "%.2f", (s > 0 ? n / s : 0) }')" \
  "$(awk -v b="$bytes" -v s="$ingest_secs" 'BEGIN { printf "%.3f", (s > 0 ? b / 1e6 / s : 0) }')"
printf '%-22s %s chunks, %s points\n' "indexed" "${chunks:-?}" "${points:-?}"
printf '%-22s %s\n' "index built (HNSW)" "$optimized"
echo
echo "== latency, $REQUESTS sequential requests each, interleaved (curl time_total, ms)"
echo "clock:${CLOCKS:- not checked;} curl pinned: ${PIN[*]:-no}"
fmt='%-44s %8s %8s %7s %12s %12s\n'
printf "$fmt" "request" "p50" "p99" "errors" "p50/healthz" "p99/healthz"
printf "$fmt" "GET /healthz (baseline)" "$h_p50" "$h_p99" "$h_err" "1.0x" "1.0x"
printf "$fmt" "POST /v1/search, ${KB_BENCH_MODE:-server default mode}, all" "$s_p50" "$s_p99" "$s_err" \
  "$(ratio "$s_p50" "$h_p50")" "$(ratio "$s_p99" "$h_p99")"
for q in $(seq 0 $((NQ - 1))); do
  read -r _ q_p50 q_p99 q_err < <(lat_stats "$TMP/search.txt" "$q")
  label="  q$((q + 1)): ${QUERIES[$q]}"
  [ "${#label}" -le 44 ] || label="${label:0:41}..."
  printf "$fmt" "$label" "$q_p50" "$q_p99" "$q_err" "$(ratio "$q_p50" "$h_p50")" "$(ratio "$q_p99" "$h_p99")"
done
