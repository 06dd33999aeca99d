"""
TLS for both sides, one policy whatever Twisted's version does by default.

Server: every TLS listener (C{ssl:} endpoints, C{--tls-endpoint} on any
endpoint type, socket-activated and C{reuseport:} alike) gets its context
from L{server_context}: TLS 1.2 as the floor, ECDHE with AES-GCM or
ChaCha20 for TLS 1.2 (TLS 1.3's suites are all fine), C{http/1.1} chosen
over ALPN - the one protocol WebSocket runs on here - and a client that
offers ALPN without it (C{h2} alone) refused with the RFC 7301 alert
C{no_application_protocol}.  Sessions resume from tickets and the
server's cache; the ticket key is replaced every hour.  The key and
certificate are re-read on SIGHUP (L{ReloadableServerTLS}).

Client: L{ClientTLS} checks the server's chain against the trust roots and
its name against the host dialled (service-identity, DNS names and IP
addresses) inside the handshake's own verification, so that every
refusal - a certificate that names another host, or names none at all
(C{CN} only, no subjectAltName) - fails the handshake.
"""

from __future__ import annotations

import ipaddress
import re
import time
import weakref
from typing import Any, Callable, Optional

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)

# The one application protocol served over TLS: WebSocket's opening
# handshake is HTTP/1.1 (RFC 6455).  WebSocket over HTTP/2 (RFC 8441) is not
# served, so h2 is never chosen.
ALPN_HTTP11 = b"http/1.1"

# TLS 1.2 suites: forward secret (ECDHE), AEAD only; the order of Mozilla's
# "intermediate" profile without the finite-field DHE ones.  TLS 1.3 uses
# OpenSSL's default suites, all of them AEAD.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

# How long one session-ticket key encrypts tickets.  OpenSSL makes a random
# key per context and never changes it; a new context every hour bounds
# what a stolen key would decrypt, at the price of one full handshake for a
# client whose ticket predates the change.
TICKET_KEY_LIFETIME = 3600.0


class TLSConfigError(ValueError):
    """
    The key or certificate file is missing, unreadable or does not match.
    """


class _WsheartTLSError(SSL.Error):
    """
    A TLS refusal of wsheart's own, shaped like OpenSSL's errors (a list of
    (library, function, reason)), which Autobahn's connection-lost log and
    other readers of C{SSL.Error} index into.
    """

    def __init__(self, where: str, message: str) -> None:
        super().__init__([("wsheart", where, message)])
        self.message = message

    def __str__(self) -> str:
        return self.message


class NoApplicationProtocol(_WsheartTLSError):
    """
    The client offered ALPN protocols and C{http/1.1} was not among them.
    """

    def __init__(self, message: str) -> None:
        super().__init__("alpn", message)


class HostnameMismatch(_WsheartTLSError):
    """
    The server's certificate does not name the host the client dialled
    (including a certificate that names no host in a subjectAltName).
    """

    def __init__(self, hostname: str, detail: str) -> None:
        super().__init__("verify", f"the server's certificate does not match hostname {hostname}: {detail}")
        self.hostname = hostname
        self.detail = detail


def select_http11(connection: SSL.Connection, offered: list[bytes]) -> bytes:
    """
    The server's ALPN choice: C{http/1.1}, or the handshake fails with
    C{no_application_protocol} (RFC 7301, section 3.2) - rather than
    letting an C{h2}-only client send an HTTP/2 preface that would be
    refused later with a less clear error.  A client that offers no ALPN
    at all is not asked (OpenSSL calls this only when ALPN is offered).
    """
    if ALPN_HTTP11 in offered:
        return ALPN_HTTP11
    names = ", ".join(p.decode("ascii", "replace") for p in offered) or "none"
    # pyOpenSSL answers an exception here with a fatal alert, which OpenSSL
    # sends as no_application_protocol for an ALPN callback.
    raise NoApplicationProtocol(f"client offered ALPN {names}; this server speaks http/1.1 only")


def read_pair(key_path: str, cert_path: str, chain_path: Optional[str] = None) -> tuple[Any, list[Any]]:
    """
    The private key, and the certificates (leaf first, then its chain) from
    C{cert_path} and C{chain_path}; a L{TLSConfigError} that says which file
    is wrong.
    """
    pems = {}
    for path in (key_path, cert_path) + ((chain_path,) if chain_path else ()):
        try:
            with open(path, "rb") as f:
                pems[path] = f.read()
        except OSError as e:
            raise TLSConfigError(f"cannot read {e.filename}: {e.strerror}") from e
    blocks = _PEM_CERT.findall(pems[cert_path])
    if not blocks:
        raise TLSConfigError(f"{cert_path} holds no PEM certificate")
    if chain_path:
        chain_blocks = _PEM_CERT.findall(pems[chain_path])
        if not chain_blocks:
            raise TLSConfigError(f"{chain_path} holds no PEM certificate")
        blocks += chain_blocks
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, pems[key_path])
    except Exception as e:
        raise TLSConfigError(f"{key_path} holds no readable PEM private key: {e}") from e
    try:
        certificates = [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
    except Exception as e:
        raise TLSConfigError(f"{cert_path} holds a certificate that cannot be read: {e}") from e
    return key, certificates


def server_context(key: Any, certificates: list[Any], describe: str = "the key and certificate") -> SSL.Context:
    """
    A server context with wsheart's policy (see the module docstring) for
    C{key} and C{certificates} (leaf first).
    """
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION)
    # An idle connection keeps no read or write buffer (about 34 KiB).
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_cipher_list(TLS12_CIPHERS.encode("ascii"))
    try:
        context.use_certificate(certificates[0])
        context.use_privatekey(key)
        for extra in certificates[1:]:
            context.add_extra_chain_cert(extra)
        context.check_privatekey()
    except SSL.Error as e:
        raise TLSConfigError(f"{describe} do not make a usable pair: {e}") from e
    # Resumption: tickets (OpenSSL's default) and the server's own cache,
    # which needs a session id context.
    context.set_session_id(b"wsheart")
    context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    context.set_alpn_select_callback(select_http11)
    return context


def load_context(key_path: str, cert_path: str, chain_path: Optional[str] = None) -> tuple[SSL.Context, ssl.Certificate]:
    """
    A server context for C{cert_path} (leaf first, then its chain, then
    C{chain_path}'s certificates) with C{key_path}, and the leaf
    certificate.
    """
    key, certificates = read_pair(key_path, cert_path, chain_path)
    context = server_context(key, certificates, f"{key_path} and {cert_path}")
    return context, ssl.Certificate(certificates[0])


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """
    Creates server TLS connections from the current context; L{reload}
    swaps in a new one, and a context older than C{ticket_key_lifetime} is
    replaced by a fresh one (a new session-ticket key) as the next
    connection arrives.
    """

    log = Logger()

    def __init__(
        self,
        key_path: str,
        cert_path: str,
        chain_path: Optional[str] = None,
        clock: Optional[Any] = None,
        ticket_key_lifetime: float = TICKET_KEY_LIFETIME,
    ) -> None:
        self.key_path = key_path
        self.cert_path = cert_path
        self.chain_path = chain_path
        self._seconds: Callable[[], float] = clock.seconds if clock is not None else time.monotonic
        self.ticket_key_lifetime = ticket_key_lifetime
        self._key, self._certificates = read_pair(key_path, cert_path, chain_path)
        self._install(server_context(self._key, self._certificates, f"{key_path} and {cert_path}"))

    @property
    def certificate(self) -> ssl.Certificate:
        return ssl.Certificate(self._certificates[0])

    def _install(self, context: SSL.Context) -> None:
        self._context = context
        self._context_since = self._seconds()

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        if self._seconds() - self._context_since >= self.ticket_key_lifetime:
            # Same key and certificate, new ticket key and session cache.
            self._install(server_context(self._key, self._certificates))
        return SSL.Connection(self._context, None)

    def describe(self) -> str:
        cert = self._certificates[0].to_cryptography()
        return f"{cert.subject.rfc4514_string()}, valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"

    def reload(self) -> bool:
        """
        Re-read the key and certificate; on failure keep serving the old
        ones and log why.  Returns whether the new ones are in use.
        """
        try:
            key, certificates = read_pair(self.key_path, self.cert_path, self.chain_path)
            context = server_context(key, certificates, f"{self.key_path} and {self.cert_path}")
        except TLSConfigError as e:
            self.log.error("TLS reload failed, keeping the current certificate: {error}", error=str(e))
            return False
        self._key, self._certificates = key, certificates
        self._install(context)
        self.log.info("TLS certificate reloaded: {certificate}", certificate=self.describe())
        return True


@implementer(IOpenSSLClientConnectionCreator)
class ClientTLS:
    """
    Client TLS connections to C{hostname} (a DNS name or an IP address):
    the chain checked against C{trust_root} (default: the platform's
    roots), the name checked by service-identity against the certificate's
    subjectAltName inside the handshake, SNI for DNS names, C{alpn}
    offered (C{http/1.1} for WebSocket; nothing for Redis), TLS 1.2 at least.

    A name that does not match fails the handshake; the connection is lost
    with a L{HostnameMismatch} (which L{describe_tls_failure} words).
    """

    def __init__(self, hostname: str, trust_root: Optional[Any] = None, alpn: tuple[bytes, ...] = (ALPN_HTTP11,)) -> None:
        self.hostname = hostname
        try:
            self._ip: Optional[str] = str(ipaddress.ip_address(hostname.strip("[]")))
        except ValueError:
            self._ip = None
        self._hostname_ascii = hostname.encode("idna").decode("ascii") if self._ip is None else self._ip
        trust = trust_root if trust_root is not None else ssl.platformTrust()
        options = ssl.CertificateOptions(trustRoot=trust, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
        self._context = options.getContext()
        if alpn:
            self._context.set_alpn_protos(list(alpn))

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if self._ip is None:
            connection.set_tlsext_host_name(self._hostname_ascii.encode("ascii"))
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verifier(tlsProtocol))
        return connection

    def _verifier(self, tls_protocol: Any) -> Callable[[SSL.Connection, Any, int, int, int], bool]:
        protocol = weakref.ref(tls_protocol)

        def verify(connection: SSL.Connection, certificate: Any, errno: int, depth: int, ok: int) -> bool:
            if not ok or depth != 0:
                # The chain's own verdict (OpenSSL's), and only the leaf
                # names the host.
                return bool(ok)
            problem = self.name_problem(certificate.to_cryptography())
            if problem is None:
                return True
            tls = protocol()
            if tls is not None:
                tls.failVerification(Failure(HostnameMismatch(self.hostname, problem)))
            return False

        return verify

    def name_problem(self, certificate: Any) -> Optional[str]:
        """
        Why the C{cryptography} certificate does not name the host dialled,
        or L{None} if it does.  Every exception service-identity may raise
        counts as a refusal (it raises C{CertificateError} for a
        certificate without a subjectAltName, not a C{VerificationError}).
        """
        from cryptography import x509
        from service_identity import cryptography as identity
        from service_identity.exceptions import CertificateError, VerificationError

        try:
            certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            # Older service-identity releases fell back to the subject's CN
            # here; browsers have not for years, and neither does wsheart.
            return "it has no subjectAltName (a CN alone names no host)"
        try:
            if self._ip is not None:
                identity.verify_certificate_ip_address(certificate, self._ip)
            else:
                identity.verify_certificate_hostname(certificate, self._hostname_ascii)
        except VerificationError as e:
            return "; ".join(str(getattr(error, "mismatched_id", error)) for error in e.errors) or str(e)
        except CertificateError as e:
            return str(e)
        except Exception as e:  # anything else from a library update: refuse, never pass
            return f"{type(e).__name__}: {e}"
        return None


def describe_tls_failure(failure: Optional[Failure]) -> Optional[str]:
    """
    One line saying which TLS check refused the server, or L{None} if
    C{failure} is not a TLS refusal: the name in its certificate, or its
    chain of trust (OpenSSL).
    """
    if failure is None:
        return None
    if failure.check(HostnameMismatch):
        return f"TLS: {failure.value}"
    if failure.check(SSL.Error):
        details = str(failure.value)
        if "certificate verify failed" in details:
            return "TLS: the server's certificate is not trusted (certificate verify failed; see --ca)"
        return f"TLS handshake failed: {details}"
    return None


class SSLEndpoint:
    """
    An C{ssl:} server endpoint description, read as Twisted reads it, and
    served as a plain listener wrapped in wsheart's TLS.

    Twisted's own C{ssl:} endpoint would build the context with Twisted's
    defaults, which change between releases (Twisted 24.7 and later fail
    every ALPN-offering client when the factory names no protocol); this
    way C{ssl:} and C{--tls-endpoint} listeners behave the same, and an
    C{ssl:} certificate is re-read on SIGHUP too.

    @ivar listen: the plain C{tcp:} description to listen on.
    """

    # ssl: options that choose what wsheart's policy fixes.
    _REFUSED = {
        "sslmethod": "TLS 1.2 is the floor and TLS 1.3 is preferred; drop sslmethod=",
        "dhParameters": "TLS 1.2 key exchange is ECDHE only; drop dhParameters=",
    }

    def __init__(self, listen: str, key_path: str, cert_path: str, chain_path: Optional[str]) -> None:
        self.listen = listen
        self.key_path = key_path
        self.cert_path = cert_path
        self.chain_path = chain_path

    @classmethod
    def parse(cls, description: str) -> "SSLEndpoint":
        """
        C{ssl:PORT[:privateKey=KEY][:certKey=CERT][:extraCertChain=CHAIN]
        [:interface=ADDRESS][:backlog=N]}, with Twisted's escapes; a
        L{ValueError} that says what is wrong.
        """
        tokens = _split_description(description)
        kind = tokens.pop(0)[1]
        if kind != "ssl":
            raise ValueError(f"not an ssl: endpoint: {description!r}")
        positional = [value for name, value in tokens if name is None]
        options = {name: value for name, value in tokens if name is not None}
        if len(positional) > 1:
            raise ValueError(f"ssl: takes one positional argument (the port), got {positional!r}")
        if positional:
            if "port" in options:
                raise ValueError("ssl: the port is given twice")
            options["port"] = positional[0]
        for name, why in cls._REFUSED.items():
            if name in options:
                raise ValueError(f"ssl: {why}")
        unknown = set(options) - {"port", "privateKey", "certKey", "extraCertChain", "interface", "backlog"}
        if unknown:
            raise ValueError(
                f"ssl: unknown option {', '.join(sorted(unknown))} "
                "(port, privateKey, certKey, extraCertChain, interface, backlog)"
            )
        if "port" not in options:
            raise ValueError("ssl: needs a port, e.g. ssl:443:privateKey=key.pem:certKey=cert.pem")
        key_path = options.get("privateKey", "server.pem")  # Twisted's default
        listen = "tcp:" + ":".join(
            f"{name}={_escape(options[name])}" for name in ("port", "interface", "backlog") if name in options
        )
        return cls(listen, key_path, options.get("certKey", key_path), options.get("extraCertChain"))


def _split_description(description: str) -> list[tuple[Optional[str], str]]:
    """
    An endpoint description's colon-separated arguments as (name or
    L{None}, value), with Twisted's backslash escapes undone.
    """
    arguments: list[tuple[Optional[str], str]] = []
    name: Optional[str] = None
    current: list[str] = []
    escaped = False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            arguments.append((name, "".join(current)))
            name, current = None, []
        elif char == "=" and name is None:
            name, current = "".join(current), []
        else:
            current.append(char)
    arguments.append((name, "".join(current)))
    return arguments


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")
