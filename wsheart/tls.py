"""
TLS that wraps any listening endpoint (C{--tls-endpoint}), including a
socket adopted from systemd, with a key and certificate that can be
re-read while running (SIGHUP): new connections get the new certificate,
open ones keep theirs.
"""

from __future__ import annotations

import re
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


class TLSConfigError(ValueError):
    """
    The key or certificate file is missing, unreadable or does not match.
    """


def load_context(key_path: str, cert_path: str) -> tuple[SSL.Context, ssl.Certificate]:
    """
    An OpenSSL context serving C{cert_path} (leaf first, then its chain)
    with C{key_path}, and the leaf certificate.
    """
    try:
        with open(key_path, "rb") as f:
            key_pem = f.read()
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
    except OSError as e:
        raise TLSConfigError(f"cannot read {e.filename}: {e.strerror}") from e
    blocks = _PEM_CERT.findall(cert_pem)
    if not blocks:
        raise TLSConfigError(f"{cert_path} holds no PEM certificate")
    try:
        key = ssl.KeyPair.load(key_pem, crypto.FILETYPE_PEM)
    except Exception as e:
        raise TLSConfigError(f"{key_path} holds no readable PEM private key: {e}") from e
    try:
        leaf = ssl.Certificate.loadPEM(blocks[0])
        chain = [ssl.Certificate.loadPEM(block).original for block in blocks[1:]]
        options = ssl.CertificateOptions(
            privateKey=key.original, certificate=leaf.original, extraCertChain=chain
        )
        context = options.getContext()
    except Exception as e:
        raise TLSConfigError(f"{key_path} and {cert_path} do not make a usable pair: {e}") from e
    return context, leaf


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """
    Creates server TLS connections from the current context; L{reload}
    swaps in a new one.
    """

    log = Logger()

    def __init__(self, key_path: str, cert_path: str) -> None:
        self.key_path = key_path
        self.cert_path = cert_path
        self._context, self.certificate = load_context(key_path, cert_path)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._context, None)

    def describe(self) -> str:
        cert = self.certificate.original.to_cryptography()
        return f"{cert.subject.rfc4514_string()}, valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"

    def reload(self) -> bool:
        """
        Re-read the key and certificate; on failure keep serving the old
        ones and log why.  Returns whether the new ones are in use.
        """
        try:
            context, certificate = load_context(self.key_path, self.cert_path)
        except TLSConfigError as e:
            self.log.error("TLS reload failed, keeping the current certificate: {error}", error=str(e))
            return False
        self._context, self.certificate = context, certificate
        self.log.info("TLS certificate reloaded: {certificate}", certificate=self.describe())
        return True
