"""
WebSocket close codes wsheart sends or acts on, and what a client does with
each: retry on the normal schedule, retry after a server hint, or stop.
"""

NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
ABNORMAL = 1006  # never on the wire: the TCP connection ended without a close frame
INVALID_PAYLOAD = 1007  # e.g. invalid UTF-8 in a text message
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
MANDATORY_EXTENSION = 1010
INTERNAL_ERROR = 1011  # also "heartbeat timeout"
SERVICE_RESTART = 1012
TRY_AGAIN_LATER = 1013

# Application codes in the private range, mirroring HTTP 401 and 403.
UNAUTHORIZED = 4401
FORBIDDEN = 4403

HEARTBEAT_TIMEOUT_REASON = "heartbeat timeout"

# A client that receives one of these stops reconnecting: sending the same
# thing again would be refused again.
TERMINAL = frozenset(
    {
        UNSUPPORTED_DATA,
        INVALID_PAYLOAD,
        POLICY_VIOLATION,
        MESSAGE_TOO_BIG,
        MANDATORY_EXTENSION,
        UNAUTHORIZED,
        FORBIDDEN,
    }
)

# Handshake answers that are refusals rather than outages.
TERMINAL_HTTP_STATUSES = frozenset({400, 401, 403, 404, 405, 426})

# Close codes whose reason may carry a JSON reconnect hint.
HINTED = frozenset({SERVICE_RESTART, TRY_AGAIN_LATER})


def is_terminal(code: "int | None") -> bool:
    """
    Whether a client should give up after a close with C{code}.
    """
    return code in TERMINAL
