#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then runs
# lint, type checks and pytest (a real Kafka broker and a real headless
# browser included). Slow soak/load checks are left to loadtests/.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"

# System packages: Debian's Chromium for the console's browser test, kcat to
# read the stream with a client that is not ours, a JRE for Kafka (usually there).
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-dejavu-core)
command -v kcat >/dev/null 2>&1 || need+=(kcat)
command -v curl >/dev/null 2>&1 || need+=(curl)  # curl --http2 offers h2c (tests/proxy/test_real_clients.py)
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
# nginx: the proxy benchmark's reference path (its smoke test runs in the suite).
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
# PostgreSQL for the hub's tests (tests/postgres_server.py starts it through scripts/postgres.sh).
ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # Without recommends: the full set pulls in desktop packages and has failed part-way here.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Kafka jars from Maven Central into .cache/kafka (cached between runs).
bash scripts/kafka.sh fetch

.venv/bin/ruff check sidecar explainers tests loadtests
.venv/bin/mypy
exec .venv/bin/pytest -m "not slow" -p no:cacheprovider "$@"
