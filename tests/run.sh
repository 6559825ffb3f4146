#!/usr/bin/env bash
# Run the test suite on a fresh machine: system tools (as root, with apt), a venv, the test
# dependencies, then pytest. Extra arguments go to pytest (e.g. -m slow, -k scan).
#
# System tools: nasm and the mingw-w64 toolchain rebuild the fixtures; gcc-multilib builds the
# 32-bit SMP harness (gatelink harness); chromium loads the HTML audit report headless; make
# runs the Makefile integration test; objdump (binutils) checks PE files gatelink writes.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for tool in nasm:nasm i686-w64-mingw32-ld:binutils-mingw-w64-i686 i686-w64-mingw32-gcc:gcc-mingw-w64-i686 \
            objdump:binutils make:make chromium:chromium; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
# gcc -m32 needs the multilib runtime (no command to probe: try a one-line build).
if ! printf 'int main(void){return 0;}\n' | gcc -m32 -x c -o /dev/null - >/dev/null 2>&1; then
    need+=(gcc-multilib)
fi
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "tests/run.sh: missing ${need[*]}; the tests that need them will be skipped" >&2
    fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest -q "$@"
