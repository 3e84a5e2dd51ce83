#!/usr/bin/env bash
# Lint, type-check, then the whole default test suite. Used by `make test` and `.ci/run`.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
set -e
echo "== ruff"; $BIN/ruff check loom tests bench scripts
echo "== mypy"; $BIN/mypy
set +e
echo "== pytest"
$BIN/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure of the suite itself" >&2
  exit 1
fi
exit "$rc"
