#!/usr/bin/env bash
# The project's checks, as CI runs them: lint, types, layer contracts, then the tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k queue).
source "$(dirname "$0")/_venv.sh"

echo "== ruff"; ruff check controller tests migrations bench
echo "== mypy --strict controller/"; mypy controller
echo "== import-linter (layers)"; lint-imports
echo "== pytest"
set +e
pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$status"
