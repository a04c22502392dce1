#!/usr/bin/env bash
# Set up the environment and run the test suite (the README's test command; CI runs this).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$root/scripts/setup_env.sh" | tail -n 1)"
cd "$root"
"$venv/bin/ruff" check .
"$venv/bin/mypy"  # the type check of the library and the task scripts (mypy.ini)
set +e
"$venv/bin/python" -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
