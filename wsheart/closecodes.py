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
UNAUTHORIZED = 4401  # no valid token (a bad one, or none where one is needed)
FORBIDDEN = 4403  # a valid token that may not do this (another user's refresh)
# The connection's token expired: get a new one, then reconnect.
TOKEN_EXPIRED = 4001
# No token within --auth-timeout of the open.
AUTH_TIMEOUT = 4408

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
        AUTH_TIMEOUT,
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


# Codes a metric label may name; the rest are peer-chosen (3000-4999 are
# free for applications) and are folded, so a peer cannot grow the label
# set (each label value is a time series kept for the process's life).
_LABELLED = frozenset({1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 1015})


def metric_label(code: "int | None") -> str:
    """
    The C{code} label of a close in metrics: a standard code as itself,
    wsheart's own (4001, 4401, 4403, 4408) too; any other code of the application
    ranges as C{3xxx} or C{4xxx}, anything else as C{other}.
    """
    if code in _LABELLED or code in (UNAUTHORIZED, FORBIDDEN, TOKEN_EXPIRED, AUTH_TIMEOUT):
        return str(code)
    if code is not None and 3000 <= code <= 3999:
        return "3xxx"
    if code is not None and 4000 <= code <= 4999:
        return "4xxx"
    return "other"
