#!/usr/bin/env bash
# Install what building kb needs beyond Rust: llama.cpp (the local generator, compiled from the
# sources the llama-cpp-sys-2 crate carries) needs cmake and a C++ compiler, and bindgen needs
# libclang. Debian packages; a no-op when they are present.
set -euo pipefail
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v g++ >/dev/null || missing+=(g++)
# libclang itself (libclang.so, libclang-14.so.1), not libclang-cpp, which the base image has
# without it and which bindgen cannot use.
ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*-linux-gnu/libclang-[0-9]*.so* >/dev/null 2>&1 \
  || missing+=(libclang-dev)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "build-deps: installing ${missing[*]}" >&2
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
  || { $SUDO apt-get update -q >&2 && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
