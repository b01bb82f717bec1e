#!/usr/bin/env bash
# Bounded mutation fuzzing of kb-ingest (sniffing, HTML/Markdown/text extraction, PDF page text,
# chunking). Failing inputs are written to ingest/fuzz/regressions/, which every test run
# replays. Usage: bash scripts/fuzz-ingest.sh [SECONDS (default 60)] [SEED (default 1)]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
KB_FUZZ_SECS="${1:-60}" KB_FUZZ_SEED="${2:-1}" \
    cargo test -p kb-ingest --test fuzz -- --ignored --nocapture fuzz_ingest
