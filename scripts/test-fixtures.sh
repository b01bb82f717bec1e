#!/usr/bin/env bash
# Real documents for the integration tests, taken from Debian packages (installed if missing):
#   bashref-3pages.pdf  pages 10-12 of the Bash Reference Manual (bash-doc), via poppler-utils
#   gzip.html           the Python 3.11 gzip module page (python3.11-doc)
# Usage: scripts/test-fixtures.sh [DIR]   (default: test-artifacts/fixtures). Idempotent.
set -euo pipefail
DIR="${1:-${KB_TEST_FIXTURES:-test-artifacts/fixtures}}"
mkdir -p "$DIR"
PKGS="bash-doc python3.11-doc poppler-utils"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "test-fixtures: installing$missing" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >&2 \
    || { $SUDO apt-get update -q >&2 && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >&2; }
fi
if [ ! -s "$DIR/bashref-3pages.pdf" ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  pdfseparate -f 10 -l 12 /usr/share/doc/bash-doc/bashref.pdf "$tmp/p%d.pdf" 2>/dev/null
  pdfunite "$tmp/p10.pdf" "$tmp/p11.pdf" "$tmp/p12.pdf" "$DIR/bashref-3pages.pdf" 2>/dev/null
fi
cp /usr/share/doc/python3.11-doc/html/library/gzip.html "$DIR/gzip.html"
echo "test-fixtures: ready in $DIR" >&2
