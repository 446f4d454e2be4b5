#!/usr/bin/env bash
# The README's test command: the test oracles (tests/install_oracles.sh, which installs only what is
# missing), then the whole suite. Arguments go to pytest, e.g. bash tests/run.sh -k ssd
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bash "$here/install_oracles.sh"
cd "$here/.." && python -m pytest -q "$@"
