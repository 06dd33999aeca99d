"""
Who a connection is and what it may do: token authentication (C{--auth
jwt}) and the channel grants a token carries.

L{tokens} verifies a JSON Web Token (PyJWT) into an L{Identity};
L{grants} says which channels an identity may subscribe to, publish on,
read the history of and see the members of; L{policy} is a daemon's
C{--auth} configuration and where a handshake carries its token.  Pure: no
I/O once the keys are loaded, time comes from the caller - except
L{jwks}, the service that fetches the keys of C{--jwt-jwks-url} (treq,
never blocking the reactor).
"""

from wsheart.auth.grants import Grants
from wsheart.auth.policy import AuthPolicy, handshake_token
from wsheart.auth.tokens import Identity, TokenRejected, TokenSettings, TokenVerifier

__all__ = ["AuthPolicy", "Grants", "Identity", "TokenRejected", "TokenSettings", "TokenVerifier", "handshake_token"]
