#!/usr/bin/env bash
# The main job on one machine: starts a local three-node Apache Kafka
# cluster (scripts/kafka-cluster.sh, left running), creates the
# `onceflow` database, writes EVENTS ad events (3 % invalid, 5 % repeats)
# over 3 partitions, and runs `onceflow run` against them until Ctrl-C.
# Metrics: http://127.0.0.1:9464/metrics
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo_root/scripts/dev-env.sh"
cd "$repo_root"

kafka_dir="${KAFKA_DIR:-$repo_root/target/kafka-local}"
events="${EVENTS:-20000}"
export ONCEFLOW_DATABASE_URL="${ONCEFLOW_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/onceflow}"
export ONCEFLOW_INSTANCE_ID="${ONCEFLOW_INSTANCE_ID:-local-1}"

cargo build --release --quiet
# Idempotent: a cluster already running in $kafka_dir is reused.
ONCEFLOW_KAFKA_BROKERS="$(scripts/kafka-cluster.sh start --dir "$kafka_dir" | tail -n1)"
export ONCEFLOW_KAFKA_BROKERS
echo "kafka: $ONCEFLOW_KAFKA_BROKERS (stop it with scripts/kafka-cluster.sh stop --dir $kafka_dir)" >&2
psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'onceflow'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE onceflow"

./target/release/onceflow produce --count "$events" --partitions 3 --manifest target/manifest.json >/dev/null
echo "wrote $events events; ground truth in target/manifest.json; running onceflow (Ctrl-C stops it)" >&2
./target/release/onceflow run
