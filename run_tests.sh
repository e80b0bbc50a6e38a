#!/usr/bin/env bash
# The test suite: sets up .venv (and tesseract when root) like run_all.sh, then runs pytest.
#   ./run_tests.sh              # the default suite (every stage, small data)
#   ./run_tests.sh --slow       # also the tests marked slow
#   ./run_tests.sh tests/test_bson.py -k truncated   # any pytest arguments
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CDISCOUNT_SETUP_BROWSER=1 source "$ROOT/scripts/setup_env.sh"  # also chromium for the service page's browser test
cd "$ROOT"
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg
args=()
for a in "$@"; do
  if [ "$a" = "--slow" ]; then args+=(-m "slow or not slow"); else args+=("$a"); fi
done
# -rs: every skipped test says why; -n 2: two pytest-xdist workers (one torch thread each, conftest.py),
# each test file on one of them (--dist loadfile: a module's shared run is made once; the session's
# trained tiny run is shared through a file lock, conftest.py); `-n 0` runs in this process
exec python -m pytest -q -rs -n "${CDISCOUNT_TEST_WORKERS:-2}" --dist loadfile "${args[@]}"
