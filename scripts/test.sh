#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test of the workspace
# (unit, property, and end-to-end tests that start real agents).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --workspace --all-targets --locked
cargo nextest run --workspace --locked --no-fail-fast "$@"
