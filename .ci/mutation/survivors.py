"""Summarise the cosmic-ray sessions that run.sh left in a folder, as Markdown.

Usage: python survivors.py OUT_DIR > survivors.md

Per module: mutants, skipped by the operators filter, killed, timed out,
survived, incompetent, pending, and the wall time of the baseline and exec;
then every surviving mutant as file:line, operator, and the mutated line
before and after.  Reads the session databases directly (sqlite3), so it needs
nothing but the standard library.
"""

import pathlib
import sqlite3
import sys


def _lines(diff):
    """
    The removed and the added lines of a unified diff, each joined into one
    line (a mutated number can take its line break with it: cosmic-ray
    rewrites the token's leading whitespace).
    """
    before, after = [], []
    for line in (diff or "").splitlines():
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("-"):
            before.append(line[1:].strip())
        elif line.startswith("+"):
            after.append(line[1:].strip())
    return " \u23ce ".join(before), " \u23ce ".join(after)


def _killer(output):
    """The first failing test in trial's output (or "timeout")."""
    if output == "timeout":
        return "timeout"
    failed = False
    for line in (output or "").splitlines():
        line = line.strip()
        if line in ("[FAIL]", "[ERROR]"):
            failed = True
        elif failed and line.startswith("tests.") and " " not in line:
            return line
    return "?"


def _read(path):
    path = pathlib.Path(path)
    return path.read_text().strip() if path.exists() else "-"


def main(out):
    out = pathlib.Path(out)
    rows, survivors, rechecked = [], [], []
    for db in sorted(out.glob("*.sqlite")):
        module = db.stem
        con = sqlite3.connect(db)
        items = con.execute(
            "SELECT s.module_path, s.operator_name, s.start_pos_row, r.worker_outcome,"
            " r.test_outcome, r.output, r.diff"
            " FROM mutation_specs s LEFT JOIN work_results r ON r.job_id = s.job_id"
            " ORDER BY s.start_pos_row, s.operator_name"
        ).fetchall()
        count = dict.fromkeys(
            ["mutants", "skipped", "killed", "timeout", "survived", "incompetent", "pending"], 0
        )
        for path, operator, row, worker, test, output, diff in items:
            count["mutants"] += 1
            worker = (worker or "").lower()
            test = (test or "").lower()
            if not worker:
                count["pending"] += 1
            elif worker == "skipped":
                count["skipped"] += 1
            elif test == "killed" and output == "timeout":
                count["timeout"] += 1
            elif test == "killed":
                count["killed"] += 1
                if module.endswith(".recheck"):
                    before, after = _lines(diff)
                    rechecked.append((module, path, row, operator.removeprefix("core/"), before, after, _killer(output)))
            elif test == "survived":
                count["survived"] += 1
                before, after = _lines(diff)
                survivors.append((module, path, row, operator.removeprefix("core/"), before, after))
            else:
                count["incompetent"] += 1
        rows.append((module, count, _read(out / f"{module}.baseline"), _read(out / f"{module}.exec")))

    print("# Mutation run: summary\n")
    print("| module | mutants | skipped (filter) | killed | timed out | survived | incompetent | pending | baseline | exec |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for module, c, baseline, execution in rows:
        print(
            f"| {module} | {c['mutants']} | {c['skipped']} | {c['killed']} | {c['timeout']} |"
            f" {c['survived']} | {c['incompetent']} | {c['pending']} | {baseline} | {execution} |"
        )
    print(
        "\nA `<module>.recheck` row is the second pass (run.sh with RECHECK=1): the"
        " survivors of the module's own tests rerun against the other unit test modules;"
        " killed there means covered elsewhere, skipped means not rechecked."
    )
    print("\n## Surviving mutants\n")
    current = None
    for module, path, row, operator, before, after in survivors:
        if module != current:
            print(f"\n### {module}\n")
            current = module
        print(f"- `{path}:{row}` {operator}")
        print(f"  - before: `{before}`")
        print(f"  - after:  `{after}`")


    if rechecked:
        print("\n## Survivors of a module's own tests killed by other unit tests (recheck)\n")
        for module, path, row, operator, before, after, killer in rechecked:
            print(f"- `{path}:{row}` {operator}: killed by `{killer}`")
            print(f"  - before: `{before}`")
            print(f"  - after:  `{after}`")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
