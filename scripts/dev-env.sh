#!/usr/bin/env bash
# Shared by run-local.sh and test.sh: makes sure what onceflow's runs and
# tests need is here. Idempotent; safe to source more than once.
#  - psql (the PostgreSQL client) for the tests' database set-up
#  - noida-db (a Kafka-compatible broker) in ./.venv
#  - a running PostgreSQL on 127.0.0.1:5432
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export NOIDA_DB="${NOIDA_DB:-$repo_root/.venv/bin/noida-db}"

need_apt=()
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
if ((${#need_apt[@]})); then
  echo "installing ${need_apt[*]}" >&2
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$NOIDA_DB" ]; then
  echo "installing noida-db 0.2.3 into $repo_root/.venv" >&2
  python3 -m venv "$repo_root/.venv"
  "$repo_root/.venv/bin/pip" install -q noida-db==0.2.3
fi

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  fi
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  pg_isready -q -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
fi
