"""
The client under test for Autobahn|Testsuite's fuzzingserver mode: for each
case, one wsheart L{ReconnectingClientService} (one attempt, no reconnect)
that echoes every message, text or binary, back to the suite; then it asks
the suite to write its reports.

    python tests/conformance/echo_client.py ws://127.0.0.1:9001 [--agent wsheart] [--deflate]

Run by tests/conformance/run.py; exits non-zero if the suite cannot be
reached or a case does not end within --case-timeout seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from wsheart.backoff import BackoffSettings
from wsheart.client import ClientListener, Message, ReconnectingClientService

# The largest message of cases 1.* to 10.* is 16 MiB (9.1.6, 9.2.6).
MAX_MESSAGE_SIZE = 32 * 1024 * 1024


class Echo(ClientListener):
    """
    Sends every message back as it came: text as text, binary as binary.
    """

    def client_message(self, client: ReconnectingClientService, message: Message) -> None:
        client.send(message)


class CaseCount(ClientListener):
    """
    Reads the one text message of the suite's C{/getCaseCount}.
    """

    count: Optional[int] = None

    def client_message(self, client: ReconnectingClientService, message: Message) -> None:
        self.count = int(message)


def one_connection(
    reactor: IReactorTime, url: str, listener: ClientListener, timeout: float, client_options: dict[str, Any]
) -> "defer.Deferred[Optional[str]]":
    """
    Connect once to C{url} with C{listener}; fires with the service's stop
    reason once the connection is over (the suite closes it), or fails
    with L{defer.TimeoutError} after C{timeout} seconds.
    """
    service = ReconnectingClientService(
        url,
        listener,
        reactor=reactor,
        backoff=BackoffSettings(max_attempts=1),
        max_message_size=MAX_MESSAGE_SIZE,
        **client_options,
    )
    service.startService()
    done = service.when_stopped()
    done.addTimeout(timeout, reactor)

    def gone(result: Any) -> Any:
        # Stop it whatever happened (a timeout leaves it running), and
        # wait until its connection is closed before the next case.
        stopped = service.stopService()
        stopped.addCallback(lambda _: result)
        return stopped

    done.addBoth(gone)
    return done


@defer.inlineCallbacks
def run(reactor: Any, argv: list[str]) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("url", help="the fuzzingserver's URL, e.g. ws://127.0.0.1:9001")
    parser.add_argument("--agent", default="wsheart", help="agent name in the reports")
    parser.add_argument(
        "--case-timeout", type=float, default=600.0, help="seconds one case may take (the suite allows 12.* up to 480)"
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a ReconnectingClientService keyword argument, e.g. handshake_timeout=5 (repeatable)",
    )
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate (the client's defaults)")
    args = parser.parse_args(argv)
    base = args.url.rstrip("/")
    options: dict[str, Any] = {}
    if args.deflate:
        from wsheart.deflate import DeflateSettings  # type: ignore[import-not-found,unused-ignore]

        options["deflate"] = DeflateSettings()
    for option in args.option:
        name, _, value = option.partition("=")
        options[name] = json.loads(value) if value else True

    counter = CaseCount()
    yield one_connection(reactor, f"{base}/getCaseCount", counter, 30.0, options)
    if counter.count is None:
        raise SystemExit(f"echo_client: no case count from {base}")
    print(f"echo_client: {counter.count} cases", flush=True)
    for case in range(1, counter.count + 1):
        url = f"{base}/runCase?case={case}&agent={args.agent}"
        yield one_connection(reactor, url, Echo(), args.case_timeout, options)
    yield one_connection(reactor, f"{base}/updateReports?agent={args.agent}", ClientListener(), 120.0, options)
    print("echo_client: reports updated", flush=True)


def main() -> None:
    task.react(run, (sys.argv[1:],))


if __name__ == "__main__":
    main()
