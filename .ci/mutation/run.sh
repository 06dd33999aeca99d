#!/usr/bin/env bash
# Bounded mutation run (cosmic-ray) over wsheart's pure core, protocol and API.
#
# What it does, on any clone of this repository:
#   1. checks the commit out as a detached git worktree in a private temp dir
#      (mutants are written into files, so never into your own work tree),
#   2. makes a venv there with cosmic-ray==8.7.0 and the project's '.[test]'
#      dependencies, then uninstalls wsheart itself so the tests import the
#      worktree's (mutated) copy - it checks that they do,
#   3. per module (one <module>.toml here each): cosmic-ray init, the
#      operators filter from the toml, a baseline run of the unmutated tests,
#      exec with one worker under `nice -n 10`, and cr-report's text report;
#   4. $OUT/survivors.md (survivors.py): counts per module and every surviving
#      mutant as file:line, operator, the line before and after.
#
# Usage:  .ci/mutation/run.sh [name ...]   (a name is a toml here without .toml,
#                                          e.g. wheel or channels-broker; default: all)
# Env:    REV=<commit>          mutate this commit (default HEAD)
#         OUT=<dir>             where sessions and reports go (default: $WORK/out)
#         WORK=<dir>            reuse a work dir from an earlier run (its src/ and venv/)
#         MODULE_BUDGET=<secs>  wall-clock cap per module exec (default 900);
#                               a capped session is resumable: rerun with the same WORK/OUT
#         KEEP=1                keep the worktree afterwards (default: removed)
#         BASELINE_ONLY=1       init and run each unmutated test command only: a
#                               quick check that the tomls still match the tree
#         RECHECK=1             second pass: rerun each module's survivors against
#                               every other unit test module (recheck/<name>.toml,
#                               sessions prepared by recheck.py),
#                               to tell "covered elsewhere" from a real gap; slow
#                               (a survivor costs a run of most of the unit suite)
#         RECHECK_BUDGET=<secs> cap per module of that pass (default 600)
#         RECHECK_LINES_<name>="N M ..."  recheck only the survivors on these lines
#                               (- in the name as _: RECHECK_LINES_channels_broker)
#
# Bounds: unit tests only (never tests.test_integration_*), trial -x so killed
# mutants stop at the first failure, a per-mutant timeout in each toml (about
# 10x the unmutated run), exotic operator replacements filtered (see any toml).
# On this project's 2-core machine the default run takes about 30 minutes
# (plus the venv install); RECHECK=1 adds up to RECHECK_BUDGET per module.
# It is NOT part of .ci/run: run it by hand when you change tests of these
# modules, and read $OUT/survivors.md (written by survivors.py).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(git -C "$HERE" rev-parse --show-toplevel)"
REV="${REV:-HEAD}"
MODULE_BUDGET="${MODULE_BUDGET:-900}"
RECHECK_BUDGET="${RECHECK_BUDGET:-600}"
WORK="${WORK:-$(mktemp -d /tmp/wsheart-mutation.XXXXXX)}"
SRC="$WORK/src"
VENV="$WORK/venv"
OUT="${OUT:-$WORK/out}"
mkdir -p "$OUT"

log() { printf '\n=== %s\n' "$*"; }

if [ ! -d "$SRC" ]; then
    log "worktree of $REV in $SRC"
    git -C "$REPO" worktree add --detach -f "$SRC" "$REV"
fi
cleanup() {
    if [ "${KEEP:-0}" != 1 ]; then
        git -C "$REPO" worktree remove --force "$SRC" 2>/dev/null || true
    fi
}
trap cleanup EXIT

if [ ! -x "$VENV/bin/cosmic-ray" ]; then
    log "venv in $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q cosmic-ray==8.7.0
    "$VENV/bin/pip" install -q "$SRC[test]"
    "$VENV/bin/pip" uninstall -y -q wsheart
fi
# The test commands in the tomls say plain `python`: it must be this venv's.
export PATH="$VENV/bin:$PATH"
export PYTHONDONTWRITEBYTECODE=1
cd "$SRC"
find wsheart tests -name __pycache__ -prune -exec rm -rf {} +
where=$(python -c 'import wsheart; print(wsheart.__file__)')
[ "$where" = "$(pwd -P)/wsheart/__init__.py" ] || { echo "tests would import $where, not the worktree" >&2; exit 1; }

if [ "$#" -gt 0 ]; then
    modules=("$@")
else
    modules=()
    for f in "$HERE"/*.toml; do modules+=("$(basename "$f" .toml)"); done
fi

# Mutants of a session without a result yet (a finished session is not run
# again, so its timings stay those of the run that did the work).
pending() {
    python - "$1" <<'PY'
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
print(con.execute("SELECT count(*) FROM work_items WHERE job_id NOT IN (SELECT job_id FROM work_results)").fetchone()[0])
PY
}

for m in "${modules[@]}"; do
    cfg="$HERE/$m.toml"
    db="$OUT/$m.sqlite"
    path=$(python -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["cosmic-ray"]["module-path"])' "$cfg")
    if [ "${BASELINE_ONLY:-0}" = 1 ]; then
        log "$m: baseline only ($path)"
        cosmic-ray init "$cfg" "$OUT/$m.baseline-only.sqlite"
        cr-filter-operators "$OUT/$m.baseline-only.sqlite" "$cfg"
        echo "$(pending "$OUT/$m.baseline-only.sqlite") mutants after the filter"
        rm -f "$OUT/$m.baseline-only.sqlite"
        nice -n 10 cosmic-ray baseline "$cfg"
        continue
    fi
    if [ ! -f "$db" ]; then
        log "$m: init"
        cosmic-ray init "$cfg" "$db"
        cr-filter-operators "$db" "$cfg"
    fi
    if [ "$(pending "$db")" -gt 0 ]; then
        log "$m: baseline"
        t0=$(date +%s.%N)
        nice -n 10 cosmic-ray baseline "$cfg"
        t1=$(date +%s.%N)
        echo "baseline $(echo "$t1 - $t0" | bc) s" | tee "$OUT/$m.baseline"
        log "$m: exec (cap ${MODULE_BUDGET}s)"
        t0=$(date +%s)
        status=0
        nice -n 10 timeout "$MODULE_BUDGET" cosmic-ray exec "$cfg" "$db" || status=$?
        t1=$(date +%s)
        echo "exec $((t1 - t0)) s, status $status" | tee "$OUT/$m.exec"
    fi
    cr-report "$db" --show-pending > "$OUT/$m.report.txt" || true
    tail -n 4 "$OUT/$m.report.txt"
    git checkout -q -- "$path"   # a capped exec can leave a mutant behind

    if [ "${RECHECK:-0}" = 1 ] && [ -f "$HERE/recheck/$m.toml" ]; then
        rdb="$OUT/$m.recheck.sqlite"
        lines_var="RECHECK_LINES_${m//-/_}"
        if [ ! -f "$rdb" ]; then
            # shellcheck disable=SC2086  # a list of line numbers
            python "$HERE/recheck.py" "$db" "$rdb" ${!lines_var:-}
        fi
        if [ "$(pending "$rdb")" -gt 0 ]; then
            log "$m: recheck of the survivors against the other unit tests (cap ${RECHECK_BUDGET}s)"
            t0=$(date +%s)
            status=0
            nice -n 10 timeout "$RECHECK_BUDGET" cosmic-ray exec "$HERE/recheck/$m.toml" "$rdb" || status=$?
            t1=$(date +%s)
            echo "exec $((t1 - t0)) s, status $status" | tee "$OUT/$m.recheck.exec"
            git checkout -q -- "$path"
        fi
    fi
done

[ "${BASELINE_ONLY:-0}" = 1 ] && exit 0
python "$HERE/survivors.py" "$OUT" > "$OUT/survivors.md"
log "summary in $OUT/survivors.md"
sed -n '1,/^## /p' "$OUT/survivors.md"
