"""
Unit tests of L{wsheart.config}: options from a TOML file and from
C{WSHEART_*} variables, their precedence, the groups, and
C{--print-config}, through the daemon's own L{Options}.
"""

from __future__ import annotations

import io
import sys
from typing import Optional

from twisted.python import usage
from twisted.trial import unittest

from wsheart import config
from wsheart.tap import Options

FULL = """
endpoint = ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.2"]

[listeners]
no-pages = true

[heartbeat]
ping-interval = 5
ping-timeout = 2
max-missed = 3

[messages]
echo-prefix = "Echo: "

[channels]
history-size = 7

[limits]
accept-rate = 250.5
allowed-origin = ["https://app.example.com"]
allow-missing-origin = false

[deflate]
deflate = true
deflate-min-size = 64

[operations]
drain-time = 3
log-format = "json"
"""


class ConfigFileTests(unittest.TestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def parse(self, argv: list[str], environ: Optional[dict[str, str]] = None) -> Options:
        options = Options()
        options.environ = environ or {}
        options.parseOptions(argv)
        return options

    def test_every_group_takes_effect(self) -> None:
        """
        Keys at the top level and in the groups' tables set the options,
        typed as on the command line.
        """
        options = self.parse(["--config", self.write(FULL)])
        self.assertEqual(options["endpoint"], ["tcp:0:interface=127.0.0.1:backlog=4096", "tcp:0:interface=127.0.0.2:backlog=4096"])
        self.assertEqual((options["ping-interval"], options["max-missed"]), (5.0, 3))
        self.assertEqual(options["echo-prefix"], "Echo: ")
        self.assertEqual(options["channels"].history_size, 7)
        self.assertEqual(options["accept-rate"], 250.5)
        self.assertEqual(options["allowed-origin"], ["https://app.example.com"])
        self.assertEqual(options["allow-missing-origin"], "no")
        self.assertEqual(options["deflate-settings"].min_size, 64)
        self.assertEqual((options["drain-time"], options["log-format"]), (3.0, "json"))

    def test_environment_overrides_the_file_and_the_command_line_both(self) -> None:
        """
        WSHEART_PING_INTERVAL beats the file, --ping-interval beats both; a
        repeatable option comes whole from the last source that sets it; a
        switch the file turns on, the environment can turn off.
        """
        path = self.write(FULL)
        self.assertEqual(self.parse(["--config", path])["no-pages"], 1)
        environ = {"WSHEART_PING_INTERVAL": "6", "WSHEART_NO_PAGES": "no", "WSHEART_API_TOKEN": "not an option"}
        options = self.parse(["--config", path], environ)
        self.assertEqual(options["ping-interval"], 6.0)
        self.assertEqual(options["no-pages"], 0, "turned off by the environment")
        self.assertEqual(len(options["endpoint"]), 2, "from the file")
        options = self.parse(["--config", path, "--ping-interval", "7", "-e", "tcp:0:interface=127.0.0.3"], environ)
        self.assertEqual(options["ping-interval"], 7.0)
        self.assertEqual(options["endpoint"], ["tcp:0:interface=127.0.0.3:backlog=4096"], "the command line's only")
        options = self.parse(["--config", path], {"WSHEART_ENDPOINT": "tcp:0:interface=127.0.0.4 tcp:0:interface=127.0.0.5"})
        self.assertEqual([e.split(":")[2] for e in options["endpoint"]], ["interface=127.0.0.4", "interface=127.0.0.5"])
        options = self.parse([], {"WSHEART_CONFIG": path})
        self.assertEqual(options["ping-interval"], 5.0, "WSHEART_CONFIG names the file")

    def test_mistakes_are_usage_errors_that_say_what_to_do(self) -> None:
        cases = [
            ("ping-intervall = 5\n", "unknown option 'ping-intervall' (did you mean ping-interval?)"),
            ("[heartbeat]\nhistory-size = 5\n", "history-size belongs in [channels], not [heartbeat]"),
            ("[beat]\nx = 1\n", "unknown table [beat]"),
            ("deflate = 1\n", "deflate is a switch: true or false"),
            ("ping-interval = [1, 2]\n", "ping-interval takes one value"),
            ("ping-interval = 0\n", "--ping-interval must be a positive number of seconds"),
            ("ping-interval = \n", "not valid TOML"),
            ("config = 'other.toml'\n", "config can only be given on the command line"),
        ]
        for text, message in cases:
            with self.assertRaises(usage.UsageError) as caught:
                self.parse(["--config", self.write(text)])
            self.assertIn(message, str(caught.exception), text)
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(["--config", "/nonexistent/wsheart.toml"])
        self.assertIn("No such file", str(caught.exception))
        with self.assertRaises(usage.UsageError) as caught:
            self.parse([], {"WSHEART_DEFLATE": "maybe"})
        self.assertIn("WSHEART_DEFLATE is a switch", str(caught.exception))

    def test_print_config_prints_a_file_that_reads_back_with_secrets_masked(self) -> None:
        """
        --print-config writes every option by group; read back with
        --config it gives the same options (but the masked password).
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        argv = ["--config", self.write(FULL), "--redis", "redis://ann:s3cret@127.0.0.1:6379/0", "--print-config"]
        with self.assertRaises(SystemExit) as caught:
            self.parse(argv)
        self.assertEqual(caught.exception.code, 0)
        text = out.getvalue()
        self.assertNotIn("s3cret", text)
        self.assertIn('redis = "redis://ann:***@127.0.0.1:6379/0"', text)
        self.assertIn("[heartbeat]\nping-interval = 5.0\n", text)
        again = self.parse(["--config", self.write(text.replace("***", "s3cret"))])
        first = self.parse(argv[:-1])
        for name in ("ping-interval", "max-missed", "accept-rate", "allowed-origin", "deflate", "no-pages", "drain-time", "redis", "history-size"):
            self.assertEqual(again[name], first[name], name)

    def test_every_option_is_in_one_group(self) -> None:
        options = Options()
        names = {o.rstrip("=") for o in options.longOpt}
        grouped = [name for _, _, members in config.GROUPS for name in members]
        self.assertEqual(sorted(set(grouped)), sorted(grouped), "in one group only")
        self.assertEqual(sorted(names - set(grouped)), [])
        self.assertEqual(sorted(set(grouped) - names), [])
        text = options.getUsage(width=100)
        self.assertLess(text.index("Heartbeat:"), text.index("--ping-interval"))
        self.assertLess(text.index("--ping-interval"), text.index("Messages:"))

    def test_rates_say_per_second(self) -> None:
        for option in ("--accept-rate", "--client-rate", "--subscribe-rate"):
            with self.assertRaises(usage.UsageError) as caught:
                self.parse([option, "-1"])
            self.assertIn("must be zero or more per second", str(caught.exception))
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(["--drain-reconnect-rate", "0"])
        self.assertIn("must be a positive number per second", str(caught.exception))
