#!/usr/bin/env bash
# The crash-loop test (SIGKILLs at random points of a multi-document ingest) with many seeds;
# CI runs one fixed seed. Usage: bash scripts/crash-seeds.sh [N (default 20)] [FIRST (default 1)]
# Needs what scripts/test.sh prepares (models, fixtures, a built test binary). Prints the
# failing seeds; exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
N="${1:-20}"
FIRST="${2:-1}"
export KB_TEST_MODELS_DIR="${KB_TEST_MODELS_DIR:-$KB_MODELS_DIR}"
export KB_TEST_FIXTURES="${KB_TEST_FIXTURES:-$PWD/test-artifacts/fixtures}"
cargo test --test it --no-run >/dev/null 2>&1 || { echo "build failed"; exit 2; }
failed=()
for ((seed = FIRST; seed < FIRST + N; seed++)); do
    if KB_CRASH_SEED=$seed cargo test -q --test it crash_loop_leaves_no_orphaned >"/tmp/kb-crash-seed-$seed.log" 2>&1; then
        echo "seed $seed: ok"
        rm -f "/tmp/kb-crash-seed-$seed.log"
    else
        echo "seed $seed: FAILED (log: /tmp/kb-crash-seed-$seed.log)"
        failed+=("$seed")
    fi
done
echo "$N seeds, ${#failed[@]} failed${failed:+: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
