#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need
# (redis-server) when it is missing, then runs every test against real
# processes. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (the tests start their own on free ports)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server
fi

cargo test --all-targets "$@"
