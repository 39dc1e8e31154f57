#!/usr/bin/env bash
# The test command of the README: installs what is missing, then runs every
# test of the workspace (unit tests, and integration tests against the real
# PostgreSQL and a noida-db broker per test binary), with the kill points
# compiled in.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo_root/scripts/dev-env.sh"
cd "$repo_root"
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
cargo nextest run --workspace --features failpoints --no-fail-fast "$@"
# The chaos suite, small: every scenario once (kill points, database and
# broker faults), judged from the outside. `chaos all` without --quick is
# the longer run.
cargo run --quiet --features failpoints -- chaos all --quick --report target/chaos-report.json
