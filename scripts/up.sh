#!/usr/bin/env bash
# Set up and start kb on its embedded defaults: fetch the embedding model if missing (and the
# local generator with KB_LLM__PROVIDER=local), install the build tools if missing, build,
# and serve on http://127.0.0.1:8080 with everything under ./data.
# Extra arguments go to `kb serve` (e.g. --addr 0.0.0.0:8080, --data-dir /srv/kb).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
bash scripts/fetch-models.sh "$KB_MODELS_DIR"
[ -e models ] || ln -s "$KB_MODELS_DIR" models
bash scripts/build-deps.sh
cargo build --bin kb
exec "$CARGO_TARGET_DIR/debug/kb" serve "$@"
