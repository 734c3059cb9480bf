#!/usr/bin/env bash
# The test command: installs what the tests need, then lint, type check and the whole suite.
# Run as root: the integration tests create network namespaces and TUN devices.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/bootstrap.sh --test
echo "== ruff" && .venv/bin/ruff check rustvpn tests bench && .venv/bin/ruff format --check rustvpn tests bench
echo "== mypy" && .venv/bin/mypy rustvpn
echo "== bench (short)" && .venv/bin/python bench/run.py --short --out "$(mktemp -d)"
echo "== pytest" && .venv/bin/python -m pytest -p no:cacheprovider -ra "$@"
