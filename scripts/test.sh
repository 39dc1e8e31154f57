#!/usr/bin/env bash
# The test command of the README: installs what is missing, then runs every
# test of the workspace (unit tests, and integration tests against the real
# PostgreSQL and a real three-node Apache Kafka cluster), with the kill
# points compiled in, then the quick chaos suite.
#
# One Kafka cluster serves the whole run (every test has its own topics,
# group and transactional ids); scenarios that hurt brokers start clusters
# of their own. The shared one is stopped when this script ends, whatever
# ends it.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo_root/scripts/dev-env.sh"
cd "$repo_root"

# Test databases earlier runs left: a failed test or chaos scenario keeps
# its own for inspection until the next run, and some tests never drop
# theirs (a developer's server held 676 of them, 5.7 GB, after a day). Each
# is dropped unless something still uses it (no FORCE: a run beside this
# one keeps its databases).
psql -w -h 127.0.0.1 -U postgres -d postgres -tAc \
  "SELECT datname FROM pg_database WHERE datname LIKE 'onceflow\_t\_%'" |
  while read -r name; do
    psql -w -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$name\"" \
      >/dev/null 2>&1 || true
  done
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi

# Built before the cluster starts: the build needs both cores.
cargo build --workspace --all-targets --features failpoints

export CHAOS_KAFKA_DIR="$repo_root/target/kafka-test-run"
rm -rf "$CHAOS_KAFKA_DIR"
trap 'scripts/kafka-cluster.sh stop --dir "$CHAOS_KAFKA_DIR" >/dev/null 2>&1 || true' EXIT
started_ms=$(date +%s%3N)
bootstrap=$(scripts/kafka-cluster.sh start --dir "$CHAOS_KAFKA_DIR" --base-port 19092 | tail -n1)
echo "kafka: three nodes up in $(($(date +%s%3N) - started_ms)) ms ($bootstrap)"

cargo nextest run --workspace --features failpoints --no-fail-fast "$@"
# The chaos suite, small: every scenario once (kill points, database faults,
# broker kills and leader moves on the real cluster), judged from the
# outside. `chaos all` without --quick is the longer run.
cargo run --quiet --features failpoints -- chaos all --quick --report target/chaos-report.json
