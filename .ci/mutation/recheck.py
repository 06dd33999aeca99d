"""Prepare a second pass over the mutants that survived a module's own tests.

Usage: python recheck.py SESSION RECHECK_SESSION [LINE ...]

Copies the cosmic-ray session SESSION to RECHECK_SESSION and makes its
survivors pending again, so that `cosmic-ray exec recheck/<module>.toml
RECHECK_SESSION` runs them against other unit test modules (recheck/*.toml
name them).  A survivor killed there is covered by the suite, just not by the
module's own tests; one that survives both is a gap or an equivalent mutant.
With LINE arguments only the survivors on those lines are rerun (the others
are marked skipped), to keep the pass within its time budget.
"""

import shutil
import sqlite3
import sys


def main(session, recheck, lines=()):
    shutil.copyfile(session, recheck)
    con = sqlite3.connect(recheck)
    wanted = {int(line) for line in lines}
    # Only the survivors stay: the recheck session counts nothing else.
    keep = "SELECT job_id FROM work_results WHERE lower(test_outcome) = 'survived'"
    for table in ("work_results", "mutation_specs", "work_items"):
        con.execute(f"DELETE FROM {table} WHERE job_id NOT IN ({keep})")
    survivors = con.execute(
        "SELECT r.job_id, s.start_pos_row FROM work_results r JOIN mutation_specs s ON s.job_id = r.job_id"
        " WHERE lower(r.test_outcome) = 'survived'"
    ).fetchall()
    again = 0
    for job_id, row in survivors:
        if wanted and row not in wanted:
            con.execute(
                "UPDATE work_results SET worker_outcome = 'SKIPPED', test_outcome = NULL,"
                " output = 'not rechecked' WHERE job_id = ?",
                (job_id,),
            )
        else:
            con.execute("DELETE FROM work_results WHERE job_id = ?", (job_id,))
            again += 1
    con.commit()
    print(f"{again} of {len(survivors)} survivors pending again in {recheck}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
