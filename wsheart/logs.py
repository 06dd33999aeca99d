"""
Log output for journald and log shippers: one JSON object per line on
stdout (C{--log-format json}), with the event's text and its fields.

wsheart logs events, not strings: C{log.info("peer {peer} ...", peer=...)}.
The JSON form keeps those fields (peer, cid, cause, misses, ...) as keys, so
a query can select every heartbeat death without parsing text.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

# Keys twisted.logger adds that say nothing to an operator, or cannot be
# serialised as they are.
_SKIP = frozenset(
    {
        "log_format",
        "log_logger",
        "log_source",
        "log_io",
        "log_legacy",
        "log_trace",
        "log_failure",
        "log_time",
        "log_level",
        "log_namespace",
        "log_system",
        "message",
        "format",
        "isError",
        "failure",
        "why",
    }
)


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each event as one line of JSON to C{stream}.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": event.get("log_time"),
            "level": getattr(level, "name", None) or ("error" if event.get("isError") else "info"),
            "namespace": event.get("log_namespace"),
            "text": formatEvent(event),
        }
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        for key, value in event.items():
            if key in _SKIP or key.startswith("_"):
                continue
            record[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        self._stream.write(json.dumps(record, default=repr) + "\n")
        self._stream.flush()


def json_stdout_observer() -> JSONLinesObserver:
    """
    The observer factory twistd uses for C{--log-format json}
    (also usable as C{twistd --logger wsheart.logs.json_stdout_observer}).
    """
    return JSONLinesObserver(sys.stdout)
