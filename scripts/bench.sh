#!/usr/bin/env bash
# The benchmark of the README: installs what is missing (as the tests do),
# builds onceflow with optimisations, starts a three-node Kafka cluster of
# its own, runs `onceflow bench` with the arguments given (defaults: a
# 300,000-record backlog on 3 partitions) and stops the cluster, whatever
# ends the run. The table goes to stdout, the JSON to
# target/bench-report.json (or --report FILE).
#
#   scripts/bench.sh                      # the full run (about 5 minutes here)
#   scripts/bench.sh --records 50000      # a shorter one
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo_root/scripts/dev-env.sh"
cd "$repo_root"

# Optimised, and without the kill points: the binary users run.
cargo build --release --bin onceflow

export CHAOS_KAFKA_DIR="$repo_root/target/kafka-bench"
rm -rf "$CHAOS_KAFKA_DIR"
trap 'scripts/kafka-cluster.sh stop --dir "$CHAOS_KAFKA_DIR" >/dev/null 2>&1 || true' EXIT
bootstrap=$(scripts/kafka-cluster.sh start --dir "$CHAOS_KAFKA_DIR" --base-port 29092 | tail -n1)
echo "kafka: three nodes up ($bootstrap)" >&2
target/release/onceflow bench "$@"
