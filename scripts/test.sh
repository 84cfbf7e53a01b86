#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need when it
# is missing (redis-server and Chromium from Debian, the Python packages of the
# chart and page tests from PyPI), then runs the Rust tests against real
# processes and the Python tests (Helm chart, watch page in headless Chromium).
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
requirements=()
for file in tests/*/requirements.txt; do requirements+=(-r "$file"); done
PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install -q "${requirements[@]}"

cargo test --all-targets "$@"
python3 -m pytest -q tests
