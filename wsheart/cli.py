"""
The C{wsheart} command (also C{python -m wsheart}).

C{wsheart connect URL}: a terminal WebSocket client built on
L{wsheart.client.ReconnectingClientService}.  Each stdin line is sent as a
text message; each message received is written to stdout (binary ones as
C{base64:} and the base64 text); state changes go to stderr.  It keeps
running across server restarts until stdin closes or it is interrupted.

Exit statuses: 0 when stdin closed or on interrupt; 1 when the client gave
up (terminal close code, refused handshake, attempt limit reached); 2 on a
usage error.
"""

from __future__ import annotations

import base64
import getopt
import sys
from collections import deque
from typing import Any, Optional, TextIO

from twisted.internet import defer, stdio
from twisted.protocols.basic import LineReceiver
from twisted.python import usage

from wsheart import __version__
from wsheart.backoff import BackoffSettings
from wsheart.client import ClientListener, ReconnectingClientService, load_trust_root
from wsheart.coerce import non_negative_float, positive_float, positive_int
from wsheart.heartbeat import HeartbeatSettings

# Lines typed while disconnected wait here and go out on reconnect; past
# this many the oldest are dropped, and stderr says so.
MAX_QUEUED_LINES = 1000


class ConnectOptions(usage.Options):
    synopsis = "URL [options]"
    longdesc = (
        "Connect to a ws:// or wss:// URL and stay connected: stdin lines are sent as "
        "text messages, received messages go to stdout, state changes to stderr."
    )
    optParameters: list[list[Any]] = [
        ["ca", None, None, "PEM file of a CA to trust instead of the system's roots (wss://)."],
        ["ping-interval", None, 25.0, "Seconds between heartbeat pings.", positive_float("ping-interval")],
        ["ping-timeout", None, 10.0, "Seconds a ping may wait for its pong.", positive_float("ping-timeout")],
        ["max-missed", None, 2, "Missed pongs in a row that make the server dead.", positive_int("max-missed")],
        ["initial-delay", None, 1.0, "Reconnect window after the first failure, seconds.", positive_float("initial-delay")],
        ["backoff-factor", None, 2.0, "Growth of the reconnect window per failure.", positive_float("backoff-factor")],
        ["max-delay", None, 60.0, "Largest reconnect window, seconds.", positive_float("max-delay")],
        ["stable-after", None, 30.0, "Seconds open before the failure count resets.", non_negative_float("stable-after")],
        ["max-attempts", None, None, "Give up after this many failed attempts in a row (default: never)", positive_int("max-attempts")],
    ]
    optFlags = [["quiet", "q", "Do not report state changes on stderr."]]

    def parseOptions(self, options: Optional[list[str]] = None) -> None:
        # Accept options after the URL too (wsheart connect URL --ca F):
        # Twisted's parser stops at the first positional argument.
        argv = sys.argv[1:] if options is None else options
        try:
            pairs, positional = getopt.gnu_getopt(argv, self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e))
        flat: list[str] = []
        for name, value in pairs:
            flat.append(name)
            if value or (name.startswith("--") and name[2:] + "=" in self.longOpt):
                flat.append(value)
            elif not name.startswith("--") and name[1:] + ":" in self.shortOpt:
                flat.append(value)
        super().parseOptions(flat + ["--"] + positional)

    def parseArgs(self, url: str) -> None:  # type: ignore[override]
        self["url"] = url

    def postOptions(self) -> None:
        if not self["url"].startswith(("ws://", "wss://")):
            raise usage.UsageError(f"URL must start with ws:// or wss://, got {self['url']!r}")
        try:
            self["heartbeat"] = HeartbeatSettings(
                self["ping-interval"], self["ping-timeout"], self["max-missed"]
            )
            self["backoff"] = BackoffSettings(
                initial=self["initial-delay"],
                factor=self["backoff-factor"],
                cap=self["max-delay"],
                stable_after=self["stable-after"],
                max_attempts=self["max-attempts"],
            )
        except ValueError as e:
            raise usage.UsageError(str(e))
        self["trust-root"] = None
        if self["ca"]:
            if not self["url"].startswith("wss://"):
                raise usage.UsageError("--ca only applies to wss:// URLs")
            try:
                self["trust-root"] = load_trust_root(self["ca"])
            except (OSError, ValueError) as e:
                raise usage.UsageError(f"--ca: {e}")


class Options(usage.Options):
    synopsis = "wsheart COMMAND [options]"
    subCommands = [["connect", None, ConnectOptions, "Connect to a WebSocket URL from the terminal."]]

    def opt_version(self) -> None:
        """
        Print the version and exit.
        """
        print(f"wsheart {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a command is required (try: wsheart connect URL)")


class TerminalListener(ClientListener):
    """
    Writes messages to stdout and state changes to stderr.
    """

    def __init__(self, out: TextIO, err: TextIO, quiet: bool) -> None:
        self.out = out
        self.err = err
        self.quiet = quiet
        self.queue: deque[str] = deque()
        self._waiting_rtt = False

    def report(self, text: str) -> None:
        if not self.quiet:
            self.err.write(f"wsheart: {text}\n")
            self.err.flush()

    def client_state(self, client: Any, state: str, detail: dict[str, Any]) -> None:
        if state == "connecting":
            self.report(f"connecting to {client.url} (attempt {detail['attempt']})")
        elif state == "open":
            self._waiting_rtt = True
        elif state == "waiting":
            self.report(
                f"reconnecting in {detail['delay']:.1f} s as attempt {detail['attempt']} ({detail['reason']})"
            )
        elif state == "stopped" and detail.get("reason"):
            self.report(f"stopped: {detail['reason']}")

    def client_opened(self, client: Any) -> None:
        while self.queue and client.send(self.queue[0]):
            self.queue.popleft()

    def client_rtt(self, client: Any, rtt: float) -> None:
        if self._waiting_rtt:
            self._waiting_rtt = False
            self.report(f"open, RTT {rtt * 1000:.1f} ms")

    def client_missed(self, client: Any, misses: int) -> None:
        self.report(f"missed pong ({misses} in a row)")

    def client_closed(self, client: Any, code: int, reason: str, was_clean: bool) -> None:
        self._waiting_rtt = False
        self.report(f"closed with code {code}" + (f": {reason}" if reason else ""))

    def client_message(self, client: Any, message: Any) -> None:
        if isinstance(message, bytes):
            message = "base64:" + base64.b64encode(message).decode("ascii")
        self.out.write(message + "\n")
        self.out.flush()

    def send_line(self, client: Any, line: str) -> None:
        if not self.queue and client.send(line):
            return
        self.queue.append(line)
        if len(self.queue) > MAX_QUEUED_LINES:
            self.queue.popleft()
            self.report(f"not connected: send queue full ({MAX_QUEUED_LINES} lines), dropped the oldest")


class StdinLines(LineReceiver):
    """
    Sends each stdin line; stdin closing ends the session.
    """

    delimiter = b"\n"
    MAX_LENGTH = 16 * 1024 * 1024

    def __init__(self, listener: TerminalListener, client: ReconnectingClientService, done: defer.Deferred[Any]) -> None:
        self.listener = listener
        self.client = client
        self.done = done

    def lineReceived(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", errors="replace")
        self.listener.send_line(self.client, text)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(None)


@defer.inlineCallbacks
def connect(reactor: Any, options: ConnectOptions, out: TextIO, err: TextIO) -> Any:
    """
    Run C{wsheart connect} until stdin closes (returns) or the client gives
    up (raises SystemExit(1)).
    """
    listener = TerminalListener(out, err, options["quiet"])
    client = ReconnectingClientService(
        options["url"],
        listener,
        reactor=reactor,
        heartbeat=options["heartbeat"],
        backoff=options["backoff"],
        trust_root=options["trust-root"],
    )
    stdin_closed: defer.Deferred[Any] = defer.Deferred()
    stdio.StandardIO(StdinLines(listener, client, stdin_closed), reactor=reactor)
    client.startService()
    gave_up = client.when_stopped()
    yield defer.DeferredList([stdin_closed, gave_up], fireOnOneCallback=True, consumeErrors=True)
    if client.stop_reason is not None:
        raise SystemExit(1)
    if listener.queue:
        listener.report(f"stdin closed with {len(listener.queue)} unsent lines")
    yield client.stopService()


def main(argv: Optional[list[str]] = None) -> None:
    """
    Console entry point.
    """
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        command = f" {options.subCommand}" if options.subCommand else ""
        sys.stderr.write(f"wsheart: {e}\n(see: wsheart{command} --help)\n")
        raise SystemExit(2)
    from twisted.internet.task import react

    react(connect, (options.subOptions, sys.stdout, sys.stderr))
