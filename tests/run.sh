#!/usr/bin/env bash
# Run the test suite on a fresh machine: system tools (as root, with apt), a venv, the test
# dependencies, then pytest. Extra arguments go to pytest (e.g. -m slow, -k scan).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for tool in nasm:nasm i686-w64-mingw32-ld:binutils-mingw-w64-i686 i686-w64-mingw32-gcc:gcc-mingw-w64-i686; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "tests/run.sh: missing ${need[*]}; the fixture rebuild tests will be skipped" >&2
    fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest -q "$@"
