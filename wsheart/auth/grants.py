"""
Channel grants: which channels a connection may subscribe to, publish on,
recover from (history) and see the members of (presence: the member list
in C{subscribed} and the join/leave events), as channel patterns
(C{chat.*}, C{user.{sub}.*}).

A token carries them in its C{wsh} claim::

    {"sub": "42", "wsh": {"subscribe": ["chat.*", "user.{sub}.*"],
                          "publish": ["chat.*"], "history": ["chat.*"],
                          "presence": ["chat.*"]}}

C{{sub}} stands for the token's own subject, so one rule serves every
user and no user can name another's channel.  What is not granted is
refused (default deny).  Anonymous connections get C{--anonymous-channels}
(subscribe and history; never publish, never presence).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

ACTIONS = ("subscribe", "publish", "history", "presence")


@dataclass(frozen=True)
class Grants:
    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    history: tuple[str, ...] = ()
    presence: tuple[str, ...] = ()

    @classmethod
    def from_claim(cls, claim: Any, sub: str) -> "Grants":
        """
        The grants of a token's C{wsh} claim (absent: none), with C{{sub}}
        replaced by C{sub}; a malformed claim raises ValueError.
        """
        if claim is None:
            return cls()
        if not isinstance(claim, dict):
            raise ValueError("the wsh claim must be an object")
        values: dict[str, tuple[str, ...]] = {}
        for action in ACTIONS:
            patterns = claim.get(action, [])
            if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
                raise ValueError(f"wsh.{action} must be a list of channel patterns")
            # A sub could hold pattern characters itself: they stay literal.
            literal = sub.replace("[", "[[]").replace("*", "[*]").replace("?", "[?]")
            values[action] = tuple(p.replace("{sub}", literal) for p in patterns)
        return cls(**values)

    def allows(self, action: str, channel: str) -> bool:
        return any(fnmatch.fnmatchcase(channel, pattern) for pattern in getattr(self, action))
