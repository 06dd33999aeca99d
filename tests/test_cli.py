"""
Tests for L{wsheart.cli}, the C{wsheart} command: its options, the stdin
line reader and the terminal listeners, with a fake client service (no
sockets, no processes; tests/test_integration_process.py runs the real
command).
"""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet import defer
from twisted.python import usage
from twisted.trial import unittest

from wsheart import cli
from wsheart.client import ReconnectingClientService


class FakeClient:
    """
    What the listeners and L{cli.StdinLines} use of a client service.
    """

    url = "ws://127.0.0.1:1/"

    def __init__(self, max_message_size: int = 100, connected: bool = True) -> None:
        self.max_message_size = max_message_size
        self.connected = connected
        self.sent: list[str] = []

    def fits(self, message: str) -> bool:
        return ReconnectingClientService.fits(self, message)  # type: ignore[arg-type]

    def send(self, message: str) -> bool:
        if not self.connected:
            return False
        self.sent.append(message)
        return True


class StdinLinesTests(unittest.TestCase):
    def setUp(self) -> None:
        self.err = io.StringIO()
        self.listener = cli.TerminalListener(io.StringIO(), self.err, quiet=False)
        self.client = FakeClient(max_message_size=100)
        self.done: defer.Deferred[Any] = defer.Deferred()
        self.lines = cli.StdinLines(self.listener, self.client, self.done)  # type: ignore[arg-type]

    def test_lines_in_pieces(self) -> None:
        """
        Lines are sent whole whatever the reads are cut at; CRLF and a
        last line without a newline are handled.
        """
        for piece in [b"fir", b"st\r\nsec", b"ond\n", b"\n", b"last"]:
            self.lines.dataReceived(piece)
        self.lines.connectionLost()
        self.assertEqual(self.client.sent, ["first", "second", "", "last"])
        self.assertTrue(self.done.called)

    def test_a_line_over_the_limit_is_skipped_and_the_next_ones_sent(self) -> None:
        """
        Defect 8: a line larger than the message limit is reported and
        skipped - without being held whole - and the lines after it are
        sent; stdin is not taken to have ended.
        """
        self.lines.dataReceived(b"before\n" + b"x" * 60)
        for _ in range(1000):  # a 60 kB line arriving in pieces
            self.lines.dataReceived(b"x" * 60)
            self.assertLessEqual(self.lines._held, 101, "the long line is not buffered")
        self.lines.dataReceived(b"\nafter\n" + b"y" * 101 + b"\nend\n")
        self.assertEqual(self.client.sent, ["before", "after", "end"])
        self.assertEqual(self.listener.refused_lines, 2)
        self.assertIn("a stdin line of 60060 bytes is over the 100-byte message limit: not sent", self.err.getvalue())
        self.assertFalse(self.done.called, "input goes on")

    def test_a_line_at_the_limit_is_sent(self) -> None:
        """
        A line of exactly the limit is sent, with or without a CR.
        """
        self.lines.dataReceived(b"z" * 100 + b"\n" + b"w" * 100 + b"\r\n")
        self.assertEqual(self.client.sent, ["z" * 100, "w" * 100])
        self.assertEqual(self.listener.refused_lines, 0)

    def test_a_failing_send_does_not_end_the_input(self) -> None:
        """
        An exception while sending one line is logged; the next is sent.
        """
        calls = []

        def flaky(message: str) -> bool:
            calls.append(message)
            if len(calls) == 1:
                raise RuntimeError("boom")
            return True

        self.client.send = flaky  # type: ignore[method-assign]
        self.lines.dataReceived(b"one\ntwo\n")
        self.assertEqual(calls, ["one", "two"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(self.done.called)


class TerminalListenerTests(unittest.TestCase):
    def test_lines_wait_while_disconnected(self) -> None:
        """
        Lines typed while disconnected are queued and go out, in order, on
        open; past the queue limit the oldest are dropped and stderr says so.
        """
        err = io.StringIO()
        listener = cli.TerminalListener(io.StringIO(), err, quiet=False)
        client = FakeClient(connected=False)
        for i in range(cli.MAX_QUEUED_LINES + 2):
            listener.send_line(client, f"l{i}")
        self.assertIn("dropped the oldest", err.getvalue())
        client.connected = True
        listener.client_opened(client)
        self.assertEqual(client.sent[:2], ["l2", "l3"])
        self.assertEqual(len(client.sent), cli.MAX_QUEUED_LINES)

    def test_oversize_line_is_not_queued(self) -> None:
        """
        Defect 8: a line too large to ever send is refused at once, not
        queued ahead of the lines after it.
        """
        listener = cli.TerminalListener(io.StringIO(), io.StringIO(), quiet=True)
        client = FakeClient(max_message_size=10, connected=False)
        listener.send_line(client, "x" * 11)
        listener.send_line(client, "ok")
        client.connected = True
        listener.client_opened(client)
        self.assertEqual(client.sent, ["ok"])
        self.assertEqual(listener.refused_lines, 1)

    def test_channel_lines_are_measured_as_the_publish_frame(self) -> None:
        """
        With --channel a line becomes a publish frame: the limit applies to
        that frame, escapes included.
        """
        listener = cli.ChannelTerminal(io.StringIO(), io.StringIO(), quiet=True, channel="chat.x")
        frame = listener.message_for('say "hi"')
        self.assertEqual(json.loads(frame), {"op": "publish", "channel": "chat.x", "data": 'say "hi"'})
        client = FakeClient(max_message_size=len(frame) - 1)
        listener.send_line(client, 'say "hi"')
        self.assertEqual(listener.refused_lines, 1)

    def test_messages_to_stdout(self) -> None:
        """
        Text messages are written as lines, binary ones as base64.
        """
        out = io.StringIO()
        listener = cli.TerminalListener(out, io.StringIO(), quiet=True)
        listener.client_message(FakeClient(), "héllo")
        listener.client_message(FakeClient(), b"\x00\x01")
        self.assertEqual(out.getvalue(), "héllo\nbase64:AAE=\n")


class OptionsTests(unittest.TestCase):
    def test_connect_options(self) -> None:
        """
        connect takes the URL before or after its options, and turns
        them into heartbeat and backoff settings.
        """
        options = cli.Options()
        options.parseOptions(["connect", "ws://127.0.0.1:8080/", "--ping-interval", "15", "--max-message-size", "2048", "--channel", "news"])
        sub = options.subOptions
        self.assertEqual((sub["url"], sub["heartbeat"].interval, sub["max-message-size"], sub["channels"]), ("ws://127.0.0.1:8080/", 15.0, 2048, ["news"]))
        self.assertIsNone(sub["token"])
        token_file = self.mktemp()
        with open(token_file, "w") as f:
            f.write("eyJ.token.sig\nignored\n")
        options = cli.Options()
        options.parseOptions(["connect", "ws://127.0.0.1:8080/", "--token-file", token_file])
        self.assertEqual(options.subOptions["token"](), "eyJ.token.sig")
        with open(token_file, "w") as f:
            f.write("renewed\n")
        self.assertEqual(options.subOptions["token"](), "renewed", "read again each time")

    def test_connect_usage_errors(self) -> None:
        """
        Bad options are usage errors that name the problem.
        """
        for argv, words in [
            (["connect", "http://x/"], "ws://"),
            (["connect", "ws://x/", "--ca", "ca.pem"], "wss://"),
            (["connect", "ws://x/", "--channel", "bad\n"], "--channel"),
            (["connect", "ws://x/", "--max-message-size", "0"], "max-message-size"),
            (["connect", "ws://x/", "--ping-timeout", "30"], "timeout"),
            (["connect", "ws://x/", "--token-file", "/nonexistent/token"], "--token-file"),
        ]:
            with self.assertRaises(usage.UsageError) as e:
                cli.Options().parseOptions(argv)
            self.assertIn(words, str(e.exception), argv)
