#!/usr/bin/env bash
# Create or reuse .venv, install requirements*.txt when one changed, and the tesseract Debian
# packages when running as root. Sourced by run_all.sh and run_tests.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CDISCOUNT_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"
APT_PACKAGES=(tesseract-ocr tesseract-ocr-fra tesseract-ocr-eng)
BROWSER_PACKAGES=(chromium chromium-driver)  # the service page's browser test (tests/test_serve.py)

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi
# requirements.txt (what `pip install -e .` installs) and every extra's file (pyproject.toml):
# the tests need all of them
REQUIREMENTS=(requirements.txt requirements-dask.txt requirements-onnx.txt requirements-serve.txt requirements-test.txt)
stamp="$VENV/.requirements.sha256"
want="$(cd "$ROOT" && cat "${REQUIREMENTS[@]}" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing ${REQUIREMENTS[*]} into $VENV (first time: several GB for torch)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "${REQUIREMENTS[@]/#/-r$ROOT/}"
  echo "$want" > "$stamp"
fi

missing_apt=()
command -v tesseract >/dev/null 2>&1 || missing_apt=("${APT_PACKAGES[@]}")
if command -v tesseract >/dev/null 2>&1; then
  langs="$(tesseract --list-langs 2>/dev/null || true)"
  grep -qx fra <<<"$langs" || missing_apt+=(tesseract-ocr-fra)
  grep -qx eng <<<"$langs" || missing_apt+=(tesseract-ocr-eng)
fi
if [ ${#missing_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian packages: ${missing_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_apt[@]}" >/dev/null
  else
    echo "[setup] WARNING: tesseract is missing; the OCR stage and its tests need the Debian packages" >&2
    echo "[setup]          ${missing_apt[*]}: run  sudo apt-get install ${APT_PACKAGES[*]}" >&2
  fi
fi
# run_tests.sh only: the browser the service page's test drives; without it that test is skipped, saying why
if [ "${CDISCOUNT_SETUP_BROWSER:-0}" = 1 ] && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian packages: ${BROWSER_PACKAGES[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${BROWSER_PACKAGES[@]}" >/dev/null; } ||
      echo "[setup] WARNING: could not install ${BROWSER_PACKAGES[*]}: tests/test_serve.py's browser test will be skipped" >&2
  else
    echo "[setup] WARNING: ${BROWSER_PACKAGES[*]} missing (sudo apt-get install ${BROWSER_PACKAGES[*]}): the browser test will be skipped" >&2
  fi
fi
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
