"""
Tests for L{wsheart.closecodes}: the numbers on the wire (RFC 6455 7.4.1
and docs/protocol.md), what clients do with each, and the bounded metric
labels.
"""

from __future__ import annotations

from twisted.trial import unittest

from wsheart import closecodes


class CloseCodeTests(unittest.TestCase):
    def test_the_numbers_on_the_wire(self) -> None:
        """
        Every code is the one RFC 6455 (and wsheart's private range, as
        documented) assigns: a renumbered constant would change the wire.
        """
        self.assertEqual(
            (
                closecodes.NORMAL, closecodes.GOING_AWAY, closecodes.PROTOCOL_ERROR, closecodes.UNSUPPORTED_DATA,
                closecodes.ABNORMAL, closecodes.INVALID_PAYLOAD, closecodes.POLICY_VIOLATION,
                closecodes.MESSAGE_TOO_BIG, closecodes.MANDATORY_EXTENSION, closecodes.INTERNAL_ERROR,
                closecodes.SERVICE_RESTART, closecodes.TRY_AGAIN_LATER, closecodes.UNAUTHORIZED, closecodes.FORBIDDEN,
            ),
            (1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 4401, 4403),
        )  # fmt: skip
        self.assertEqual(closecodes.HEARTBEAT_TIMEOUT_REASON, "heartbeat timeout")

    def test_what_clients_do(self) -> None:
        """
        Terminal codes and handshake statuses stop a client; 1012/1013
        carry hints; everything else is retried on the schedule.
        """
        self.assertEqual(sorted(closecodes.TERMINAL), [1003, 1007, 1008, 1009, 1010, 4401, 4403, 4408])
        self.assertEqual(sorted(closecodes.TERMINAL_HTTP_STATUSES), [400, 401, 403, 404, 405, 426])
        self.assertEqual(sorted(closecodes.HINTED), [1012, 1013])
        for code in (1000, 1001, 1006, 1011, 1012, 1013, None):
            self.assertFalse(closecodes.is_terminal(code), code)
        for code in closecodes.TERMINAL:
            self.assertTrue(closecodes.is_terminal(code), code)

    def test_metric_labels_are_bounded(self) -> None:
        """
        Standard codes and wsheart's own are labels as themselves; other
        application codes fold into 3xxx or 4xxx, anything else "other".
        """
        table = {
            1000: "1000", 1001: "1001", 1005: "1005", 1006: "1006", 1011: "1011", 1015: "1015",
            4401: "4401", 4403: "4403",
            3000: "3xxx", 3999: "3xxx", 4000: "4xxx", 4402: "4xxx", 4999: "4xxx",
            1004: "other", 1016: "other", 2999: "other", 5000: "other", 999: "other", None: "other",
        }  # fmt: skip
        for code, label in table.items():
            self.assertEqual(closecodes.metric_label(code), label, code)
