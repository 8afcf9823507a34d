#!/usr/bin/env bash
# Install everything the tests need into .venv and run the test suite (this is what CI runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CHATTERBOX_EXTRA="${CHATTERBOX_EXTRA:-cpu}" scripts/install.sh --test
exec .venv/bin/python -m pytest -q "$@"
