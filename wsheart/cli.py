"""
The C{wsheart} command (also C{python -m wsheart}).

C{wsheart connect URL}: a terminal WebSocket client built on
L{wsheart.client.ReconnectingClientService}.  Each stdin line is sent as a
text message; each message received is written to stdout (binary ones as
C{base64:} and the base64 text); state changes go to stderr.  It keeps
running across server restarts until stdin closes or it is interrupted.
With C{--channel NAME} (repeatable) it speaks wsheart.v1 instead: it
subscribes, writes each channel message to stdout as one JSON object
C{{"channel", "epoch", "seq", "data"}}, resumes from its last position after
every reconnect, and publishes each stdin line (as a JSON string) to the
first channel.

C{wsheart publish ADMIN_URL CHANNEL MESSAGE}: publish through the HTTP API
of the admin endpoint; prints C{{"channel", "epoch", "seq"}}.

A stdin line too large to send (over C{--max-message-size} as the message
it becomes) is reported on stderr and skipped - never buffered whole - and
the lines after it are sent as usual.

Exit statuses: 0 when stdin closed or on interrupt (connect) or when
published (publish); 1 when the client gave up (terminal close code,
refused handshake, attempt limit reached), when stdin held a line too large
to send, or the publish failed; 2 on a usage error.
"""

from __future__ import annotations

import base64
import getopt
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from typing import Any, Optional, TextIO

from twisted.internet import defer, protocol, stdio
from twisted.logger import Logger
from twisted.python import usage

from wsheart import __version__
from wsheart.backoff import BackoffSettings
from wsheart.channels.client import ChannelSession
from wsheart.channels.model import SUBPROTOCOL, ChannelError, check_channel_name
from wsheart.client import ClientListener, ReconnectingClientService, load_trust_root
from wsheart.deflate import DeflateSettings
from wsheart.coerce import non_negative_float, positive_factor, positive_float, positive_int
from wsheart.heartbeat import HeartbeatSettings

# Lines typed while disconnected wait here and go out on reconnect; past
# this many the oldest are dropped, and stderr says so.
MAX_QUEUED_LINES = 1000


class _GnuOptions(usage.Options):
    def parseOptions(self, options: Optional[list[str]] = None) -> None:
        # Accept options after the positional arguments too (wsheart
        # connect URL --ca F): Twisted's parser stops at the first one.
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


def _read_token(path: str) -> str:
    """
    The token on the first line of C{path}; ValueError saying what is wrong.
    """
    try:
        with open(path, "rb") as f:
            token = f.readline().strip().decode("ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(str(e)) from None
    if not token:
        raise ValueError(f"{path} holds no token on its first line")
    return token


class ConnectOptions(_GnuOptions):
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
        ["backoff-factor", None, 2.0, "Growth of the reconnect window per failure.", positive_factor("backoff-factor")],
        ["max-delay", None, 60.0, "Largest reconnect window, seconds.", positive_float("max-delay")],
        ["stable-after", None, 30.0, "Seconds open before the failure count resets.", non_negative_float("stable-after")],
        ["max-attempts", None, None, "Give up after this many failed attempts in a row (default: never)", positive_int("max-attempts")],
        ["max-message-size", None, 1024 * 1024, "Largest message, in bytes, sent or received; a longer stdin line is skipped.", positive_int("max-message-size")],
        ["name", None, None, "With --channel: the name others see in presence."],
        ["token-file", None, None, "File whose first line is a token for a daemon with --auth jwt (sent as Authorization: Bearer; read again before every attempt and when the server asks for a refresh)."],
    ]
    optFlags = [
        ["quiet", "q", "Do not report state changes on stderr."],
        ["deflate", None, "Offer permessage-deflate (RFC 7692); messages of 256 bytes or more are then compressed both ways if the server agrees."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["channels"] = []

    def opt_channel(self, name: str) -> None:
        """
        Subscribe to this channel over wsheart.v1 (repeatable); stdin lines are published to the first.
        """
        try:
            self["channels"].append(check_channel_name(name))
        except ChannelError as e:
            raise usage.UsageError(f"--channel: {e.reason}")

    # twisted.python.usage counts the positional arguments from this
    # signature (Options declares *args): hence the override.
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
        self["token"] = None
        if self["token-file"]:
            path = self["token-file"]
            try:
                _read_token(path)  # now, so that a bad file is a usage error
            except ValueError as e:
                raise usage.UsageError(f"--token-file: {e}")
            # Read again before every attempt and on every refresh: whatever
            # renews the file (a sidecar, cron) is picked up.
            self["token"] = lambda: _read_token(path)
        self["trust-root"] = None
        if self["ca"]:
            if not self["url"].startswith("wss://"):
                raise usage.UsageError("--ca only applies to wss:// URLs")
            try:
                self["trust-root"] = load_trust_root(self["ca"])
            except (OSError, ValueError) as e:
                raise usage.UsageError(f"--ca: {e}")


class PublishOptions(_GnuOptions):
    synopsis = "ADMIN_URL CHANNEL MESSAGE [options]"
    longdesc = (
        "Publish MESSAGE (a JSON string, or any JSON value with --json) to CHANNEL through the "
        "channel API of a wsheart admin endpoint, e.g. wsheart publish http://127.0.0.1:9090 news hello. "
        "Retried on network errors with one Idempotency-Key, so it is published at most once."
    )
    optParameters: list[list[Any]] = [
        ["token-file", None, None, "File whose first line is the API token (default: $WSHEART_API_TOKEN)."],
        ["idempotency-key", None, None, "Key that makes retries safe (default: a fresh random one)."],
        ["retries", None, 3, "Attempts on network errors and 5xx answers.", positive_int("retries")],
        ["timeout", None, 10.0, "Seconds per attempt.", positive_float("timeout")],
    ]
    optFlags = [["json", None, "MESSAGE is JSON (an object, a number, ...), not a string."]]

    # The arguments named, as above.
    def parseArgs(self, admin_url: str, channel: str, message: str) -> None:  # type: ignore[override]
        self["admin-url"] = admin_url.rstrip("/")
        self["channel"] = channel
        self["message"] = message

    def postOptions(self) -> None:
        if not self["admin-url"].startswith(("http://", "https://")):
            raise usage.UsageError(f"ADMIN_URL must start with http:// or https://, got {self['admin-url']!r}")
        try:
            check_channel_name(self["channel"])
        except ChannelError as e:
            raise usage.UsageError(e.reason)
        if self["json"]:
            try:
                self["data"] = json.loads(self["message"])
            except ValueError as e:
                raise usage.UsageError(f"--json: MESSAGE is not JSON: {e}")
        else:
            self["data"] = self["message"]
        if self["token-file"]:
            try:
                self["token"] = _read_token(self["token-file"])
            except ValueError as e:
                raise usage.UsageError(f"--token-file: {e}")
        else:
            self["token"] = os.environ.get("WSHEART_API_TOKEN", "")
        if not self["token"]:
            raise usage.UsageError("no API token: use --token-file or set WSHEART_API_TOKEN")
        self["idempotency-key"] = self["idempotency-key"] or uuid.uuid4().hex


class Options(usage.Options):
    synopsis = "wsheart COMMAND [options]"
    subCommands = [
        ["connect", None, ConnectOptions, "Connect to a WebSocket URL from the terminal."],
        ["publish", None, PublishOptions, "Publish a message to a channel through the admin endpoint's API."],
    ]

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
        # Lines that could never be sent: over the message size limit.
        self.refused_lines = 0

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
        while self.queue and self._send(client, self.queue[0]):
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

    def message_for(self, line: str) -> str:
        """
        The message a stdin line becomes.
        """
        return line

    def refuse_line(self, size: int, limit: int) -> None:
        """
        A line could never be sent: say so, count it, go on with the next.
        """
        self.refused_lines += 1
        self.report(f"a stdin line of {size} bytes is over the {limit}-byte message limit: not sent")

    def send_line(self, client: Any, line: str) -> None:
        message = self.message_for(line)
        if not client.fits(message):
            self.refuse_line(len(message.encode("utf-8")), client.max_message_size)
            return
        if not self.queue and self._send(client, line):
            return
        self.queue.append(line)
        if len(self.queue) > MAX_QUEUED_LINES:
            self.queue.popleft()
            self.report(f"not connected: send queue full ({MAX_QUEUED_LINES} lines), dropped the oldest")

    def _send(self, client: Any, line: str) -> bool:
        return bool(client.send(line))


class ChannelTerminal(TerminalListener):
    """
    The wsheart.v1 mode of C{wsheart connect}: channel messages go to
    stdout as JSON lines, stdin lines are published to the first channel.
    """

    def __init__(self, out: TextIO, err: TextIO, quiet: bool, channel: str) -> None:
        super().__init__(out, err, quiet)
        self.channel = channel
        self.session: Optional[ChannelSession] = None
        self.refused: Optional[str] = None

    def channel_subscribed(self, session: ChannelSession, channel: str, recovered: bool) -> None:
        position = session.positions[channel]
        seq = position.seq if position is not None else 0
        how = "recovered every missed message" if recovered else "nothing recovered"
        self.report(f"subscribed to {channel} at seq {seq} ({how})")

    def channel_message(self, session: ChannelSession, channel: str, data: Any, epoch: str, seq: int) -> None:
        line = {"channel": channel, "epoch": epoch, "seq": seq, "data": data}
        self.out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.out.flush()

    def channel_presence(self, session: ChannelSession, channel: str, event: str, client: dict[str, Any]) -> None:
        who = client.get("name") or client.get("id")
        self.report(f"{who} {'joined' if event == 'join' else 'left'} {channel}")

    def channel_error(self, session: ChannelSession, code: int, reason: str, frame: dict[str, Any]) -> None:
        self.report(f"server error {code}: {reason}")
        if code == 0:
            self.refused = reason

    def message_for(self, line: str) -> str:
        # The frame wsheart.channels.client sends for the publish.
        return json.dumps({"op": "publish", "channel": self.channel, "data": line}, separators=(",", ":"))

    def _send(self, client: Any, line: str) -> bool:
        return self.session is not None and self.session.publish(self.channel, line)


class StdinLines(protocol.Protocol):
    """
    Sends each stdin line; stdin closing ends the session.

    A line is held until its newline, but never more of it than the
    client's message limit: the rest of a longer line is skipped as it
    arrives (it could never be sent), reported, and the next line goes
    out as usual.  Nothing a line does ends the input early.
    """

    log = Logger()

    def __init__(self, listener: TerminalListener, client: ReconnectingClientService, done: defer.Deferred[Any]) -> None:
        self.listener = listener
        self.client = client
        self.done = done
        # The line so far, in pieces (joined once, at its newline).
        self._pieces: list[bytes] = []
        self._held = 0
        self._skipped: Optional[int] = None  # bytes of the line being skipped

    def dataReceived(self, data: bytes) -> None:
        limit = self.client.max_message_size + 1  # + a "\r" before the newline
        while data:
            end = data.find(b"\n")
            piece, data = (data, b"") if end < 0 else (data[:end], data[end + 1 :])
            if self._skipped is not None:
                self._skipped += len(piece)
            elif self._held + len(piece) > limit:
                self._skipped = self._held + len(piece)
                self._pieces, self._held = [], 0
            elif piece:
                self._pieces.append(piece)
                self._held += len(piece)
            if end >= 0:
                self._line_done()

    def _line_done(self) -> None:
        skipped, self._skipped = self._skipped, None
        line = b"".join(self._pieces)
        self._pieces, self._held = [], 0
        if skipped is not None:
            self.listener.refuse_line(skipped, self.client.max_message_size)
            return
        text = line.rstrip(b"\r").decode("utf-8", errors="replace")
        try:
            self.listener.send_line(self.client, text)
        except Exception:
            self.log.failure("sending a stdin line failed")

    def connectionLost(self, reason: Any = None) -> None:
        if self._pieces or self._skipped is not None:
            self._line_done()  # a last line without its newline
        if not self.done.called:
            self.done.callback(None)


@defer.inlineCallbacks
def connect(reactor: Any, options: ConnectOptions, out: TextIO, err: TextIO) -> Any:
    """
    Run C{wsheart connect} until stdin closes (returns) or the client gives
    up (raises SystemExit(1)).
    """
    listener: TerminalListener
    service_listener: Any
    protocols = None
    if options["channels"]:
        listener = ChannelTerminal(out, err, options["quiet"], options["channels"][0])
        session = ChannelSession(listener, options["channels"], name=options["name"])
        listener.session = session
        service_listener, protocols = session, [SUBPROTOCOL]
    else:
        listener = service_listener = TerminalListener(out, err, options["quiet"])
    client = ReconnectingClientService(
        options["url"],
        service_listener,
        reactor=reactor,
        heartbeat=options["heartbeat"],
        backoff=options["backoff"],
        trust_root=options["trust-root"],
        protocols=protocols,
        max_message_size=options["max-message-size"],
        token=options["token"],
        deflate=DeflateSettings() if options["deflate"] else None,
    )
    stdin_closed: defer.Deferred[Any] = defer.Deferred()
    stdio.StandardIO(StdinLines(listener, client, stdin_closed), reactor=reactor)
    client.startService()
    gave_up = client.when_stopped()
    yield defer.DeferredList([stdin_closed, gave_up], fireOnOneCallback=True, consumeErrors=True)
    if client.stop_reason is not None or getattr(listener, "refused", None):
        raise SystemExit(1)
    if listener.queue:
        listener.report(f"stdin closed with {len(listener.queue)} unsent lines")
    yield client.stopService()
    if listener.refused_lines:
        listener.report(f"{listener.refused_lines} stdin lines were too large to send")
        raise SystemExit(1)


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
    if options.subCommand == "publish":
        raise SystemExit(publish(options.subOptions, sys.stdout, sys.stderr))
    from twisted.internet.task import react

    react(connect, (options.subOptions, sys.stdout, sys.stderr))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None  # the 3xx is reported as an HTTP error


def publish(options: PublishOptions, out: TextIO, err: TextIO) -> int:
    """
    C{wsheart publish}: one POST, retried with the same Idempotency-Key on
    network errors and 5xx answers.  Returns the exit status.
    """
    url = f"{options['admin-url']}/publish/{options['channel']}"
    body = json.dumps(options["data"]).encode("utf-8")
    headers = {
        "Authorization": f"Bearer {options['token']}",
        "Content-Type": "application/json",
        "Idempotency-Key": options["idempotency-key"],
    }
    # The admin endpoint is private: never send the token through a proxy
    # or, by following a redirect, to another host.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())
    for attempt in range(1, options["retries"] + 1):
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with opener.open(request, timeout=options["timeout"]) as response:
                out.write(response.read().decode("utf-8"))
                out.flush()
                return 0
        except urllib.error.HTTPError as e:
            try:
                reason = json.loads(e.read().decode("utf-8")).get("error", "")
            except (ValueError, AttributeError):
                reason = ""
            if e.code >= 500 and attempt < options["retries"]:
                time.sleep(0.5 * attempt)
                continue
            err.write(f"wsheart: publish refused: HTTP {e.code}" + (f": {reason}" if reason else "") + "\n")
            return 1
        except (urllib.error.URLError, OSError) as e:
            if attempt < options["retries"]:
                time.sleep(0.5 * attempt)
                continue
            err.write(f"wsheart: publish failed after {attempt} attempts: {getattr(e, 'reason', e)}\n")
            return 1
    return 1
