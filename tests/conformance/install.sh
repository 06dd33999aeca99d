#!/usr/bin/env bash
# Installs Autobahn|Testsuite (wstest, a Python 2.7 program) into .venv27/ at
# the repository root, from PyPI, by the pins in requirements-py27.txt.
#
# Python 2.7 is found by path: $WSHEART_PY27 if set, else pyenv's 2.7 (the
# machines this project runs on carry one), else python2.7 on PATH.  Nothing is
# installed outside .venv27/: virtualenv itself is bootstrapped with
# `pip install --target` (virtualenv 16.7 is the last single-file release that
# runs on 2.7 and needs no other package).  Re-running is cheap: an
# environment whose pins are already satisfied is left alone.
#
# Prints the path of wstest on success.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/.venv27"
requirements="$here/requirements-py27.txt"

find_python27() {
    if [ -n "${WSHEART_PY27:-}" ]; then
        echo "$WSHEART_PY27"
        return
    fi
    local pyenv_root candidate
    pyenv_root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
    for candidate in "$pyenv_root"/versions/2.7*/bin/python /root/.pyenv/versions/2.7.18/bin/python; do
        if [ -x "$candidate" ]; then
            echo "$candidate"
            return
        fi
    done
    command -v python2.7 || true
}

py27="$(find_python27)"
if [ -z "$py27" ] || ! "$py27" -c 'import sys; assert sys.version_info[:2] == (2, 7)' 2>/dev/null; then
    echo "install.sh: no Python 2.7 found${py27:+ ($py27 is not one)} (looked at \$WSHEART_PY27," \
         "\$(pyenv root)/versions/2.7*, /root/.pyenv/versions/2.7.18 and python2.7 on PATH);" \
         "Autobahn|Testsuite needs one" >&2
    exit 1
fi

# (pip 19 on 2.7 knows no --no-python-version-warning; newer ones read it from here)
export PIP_NO_PYTHON_VERSION_WARNING=1
pip_quiet=(--disable-pip-version-check -q)
wstest="$venv/env/bin/wstest"
stamp="$venv/env/.requirements"
if [ -x "$wstest" ] && cmp -s "$requirements" "$stamp"; then
    echo "$wstest"
    exit 0
fi

echo "install.sh: installing Autobahn|Testsuite under $py27 into $venv" >&2
rm -rf "$venv"
mkdir -p "$venv"
# pip on 2.7 is chatty (its end-of-life notice, warnings about index
# locations a machine's pip.conf names): its output is shown only if it fails.
log="$venv/install.log"
quietly() {
    if ! "$@" >>"$log" 2>&1; then
        cat "$log" >&2
        echo "install.sh: FAILED: $*" >&2
        exit 1
    fi
}
quietly "$py27" -m pip install "${pip_quiet[@]}" --target "$venv/.bootstrap" 'virtualenv==16.7.12'
quietly env PYTHONPATH="$venv/.bootstrap" "$py27" -m virtualenv -q --no-download "$venv/env"
quietly "$venv/env/bin/python" -m pip install "${pip_quiet[@]}" -r "$requirements"
quietly "$wstest" --autobahnversion
grep -E '^(Autobahn|AutobahnTestSuite) [0-9]' "$log" >&2 || true
cp "$requirements" "$stamp"
echo "$wstest"
