# Shared settings for kb's scripts (sourced, not run).
# The cargo target directory lives at a stable path outside the clone, so a fresh clone on the
# same machine (CI included) reuses what was already built.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/kb-target}"
# Model files are shared the same way; ./models in the clone points at them.
export KB_MODELS_DIR="${KB_MODELS_DIR:-${HOME:-/root}/.cache/kb-models}"
