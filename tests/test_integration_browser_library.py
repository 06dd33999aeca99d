"""
The JavaScript side of the browser library, run from trial so that the
README's one test command covers it: Node's test runner on tests/js (unit
tests of wsheart.js with injected time and sockets) and tsc on its type
declaration.  Both need only node (tsc comes from tests/js/package-lock.json:
`npm ci --prefix tests/js`).
"""

from __future__ import annotations

import os
import subprocess

from twisted.trial import unittest

from .loopback import REPO, require_tool

JS_TESTS = os.path.join(REPO, "tests", "js")


class BrowserLibraryTests(unittest.TestCase):
    def run_tool(self, argv: list[str]) -> str:
        result = subprocess.run(argv, cwd=JS_TESTS, capture_output=True, text=True, timeout=120)
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        return output

    def test_node_unit_tests(self) -> None:
        """
        node --test tests/js: every test passes, and there are some.
        """
        node = require_tool("node", "the wsheart.js unit tests need Node.js")
        output = self.run_tool([node, "--test", "--test-reporter=tap", "."])
        counts = dict(line.split()[1:3] for line in output.splitlines() if line.startswith("# ") and len(line.split()) == 3)
        self.assertGreater(int(counts.get("pass", 0)), 10, output)
        self.assertEqual(counts.get("fail"), "0", output)

    def test_type_declaration(self) -> None:
        """
        wsheart.d.ts compiles, and describes the API (tests/js/types-check.ts).
        """
        tsc = require_tool(os.path.join(JS_TESTS, "node_modules", ".bin", "tsc"), "run `npm ci --prefix tests/js` first")
        self.run_tool([tsc, "-p", "."])
