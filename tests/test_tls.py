"""
Unit tests of wsheart.tls with keys and certificates made on the fly (with
C{cryptography}, in self.mktemp() directories): loading a key and chain,
the TLSConfigError messages for missing, unreadable and mismatched files,
and ReloadableServerTLS serving new connections the reloaded certificate
while keeping the old one when the new files are broken.  TLS handshakes
run in memory (TLSMemoryBIOFactory over twisted.test.iosim): no sockets.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from wsheart.tls import ReloadableServerTLS, TLSConfigError, load_context

from .loopback import make_ca, make_server_cert


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def read_certificate(path: str) -> ssl.Certificate:
    """
    The first certificate in a PEM file.
    """
    with open(path, "rb") as f:
        return ssl.Certificate.loadPEM(f.read())


def common_name(certificate: Any) -> str:
    """
    The subject CN of a pyOpenSSL or Twisted certificate.
    """
    original = getattr(certificate, "original", certificate)
    return str(original.get_subject().CN)


class TLSTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.ca_key, self.ca_cert, self.ca_path = make_ca(self.directory)
        self.key_path, self.cert_path = make_server_cert(self.directory, self.ca_key, self.ca_cert, "localhost")

    def other_pair(self, hostname: str, stem: str) -> tuple[str, str]:
        """
        Another key and certificate, signed by the same CA.
        """
        return make_server_cert(self.directory, self.ca_key, self.ca_cert, hostname, stem=stem)

    def install(self, key_path: str, cert_path: str) -> None:
        """
        Put other files where the server reads its key and certificate (as
        a certificate renewal does).
        """
        shutil.copyfile(key_path, self.key_path)
        shutil.copyfile(cert_path, self.cert_path)

    def handshake(self, tls: ReloadableServerTLS, hostname: str = "localhost") -> tuple[Any, Recorder, iosim.IOPump]:
        """
        A TLS connection in memory from a client trusting the test CA to a
        server using C{tls}; returns the client's TLS protocol, what the
        client application received, and the pump.
        """
        trust = read_certificate(self.ca_path)
        recorder = Recorder()
        # TLS writes are gathered until the clock turns; the pump turns it.
        clock = Clock()
        client_factory = TLSMemoryBIOFactory(
            ssl.optionsForClientTLS(hostname, trustRoot=trust), True, Factory.forProtocol(lambda: recorder), clock=clock
        )
        server_factory = TLSMemoryBIOFactory(tls, False, Factory.forProtocol(Echo), clock=clock)
        server = server_factory.buildProtocol(None)
        client = client_factory.buildProtocol(None)
        pump = iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), greet=False, clock=clock
        )
        pump.flush()
        return client, recorder, pump

    def assertSpeaks(self, client: Any, recorder: Recorder, pump: iosim.IOPump, data: bytes) -> None:
        """
        Data sent over the connection comes back decrypted (the server
        echoes).
        """
        recorder.received = b""
        client.write(data)
        pump.flush()
        self.assertEqual(recorder.received, data)


class LoadContextTests(TLSTestCase):
    """
    load_context: a key and a certificate chain, or a clear error.
    """

    def test_key_and_chain(self) -> None:
        """
        A matching key and a leaf-then-CA file give a context and the leaf
        certificate (not the CA's).
        """
        context, leaf = load_context(self.key_path, self.cert_path)
        self.assertIsInstance(context, SSL.Context)
        self.assertEqual(common_name(leaf), "localhost")

    def test_missing_key(self) -> None:
        """
        A key file that does not exist is named in the error, with why.
        """
        missing = os.path.join(self.directory, "nope.key")
        with self.assertRaises(TLSConfigError) as caught:
            load_context(missing, self.cert_path)
        self.assertEqual(str(caught.exception), f"cannot read {missing}: No such file or directory")

    def test_missing_certificate(self) -> None:
        """
        A certificate file that does not exist is named in the error.
        """
        missing = os.path.join(self.directory, "nope.pem")
        with self.assertRaises(TLSConfigError) as caught:
            load_context(self.key_path, missing)
        self.assertEqual(str(caught.exception), f"cannot read {missing}: No such file or directory")

    def test_unreadable_path(self) -> None:
        """
        A directory where the key should be is an error naming it, not a
        traceback.
        """
        with self.assertRaises(TLSConfigError) as caught:
            load_context(self.directory, self.cert_path)
        self.assertIn(f"cannot read {self.directory}", str(caught.exception))

    def test_no_certificate_in_file(self) -> None:
        """
        A certificate file without a PEM certificate (here: the key) says
        so.
        """
        with self.assertRaises(TLSConfigError) as caught:
            load_context(self.key_path, self.key_path)
        self.assertEqual(str(caught.exception), f"{self.key_path} holds no PEM certificate")

    def test_no_key_in_file(self) -> None:
        """
        A key file without a readable private key (here: the certificate)
        says so.
        """
        with self.assertRaises(TLSConfigError) as caught:
            load_context(self.cert_path, self.cert_path)
        self.assertIn(f"{self.cert_path} holds no readable PEM private key", str(caught.exception))

    def test_mismatched_key_and_certificate(self) -> None:
        """
        The key of one pair with the certificate of another is refused as
        not a usable pair, naming both files.
        """
        other_key, _ = self.other_pair("other.example", "other")
        with self.assertRaises(TLSConfigError) as caught:
            load_context(other_key, self.cert_path)
        self.assertIn(f"{other_key} and {self.cert_path} do not make a usable pair", str(caught.exception))

    def test_error_is_a_value_error(self) -> None:
        """
        TLSConfigError is a ValueError, so option parsing reports it like any
        bad value.
        """
        self.assertTrue(issubclass(TLSConfigError, ValueError))


class ReloadableServerTLSTests(TLSTestCase):
    """
    Serving, describing and reloading.
    """

    def test_provides_the_connection_creator_interface(self) -> None:
        """
        ReloadableServerTLS is what TLSMemoryBIOFactory accepts as server
        TLS options.
        """
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, ReloadableServerTLS(self.key_path, self.cert_path)))

    def test_bad_files_at_start(self) -> None:
        """
        Constructing it with bad files raises TLSConfigError (start-up
        stops with the reason).
        """
        with self.assertRaises(TLSConfigError):
            ReloadableServerTLS(os.path.join(self.directory, "nope.key"), self.cert_path)

    def test_serves_its_certificate_and_chain(self) -> None:
        """
        A client that trusts only the CA completes a handshake, checks the
        name, and gets the server's certificate followed by the rest of the
        file's chain (the CA here).
        """
        tls = ReloadableServerTLS(self.key_path, self.cert_path)
        client, recorder, pump = self.handshake(tls)
        self.assertEqual(common_name(client.getPeerCertificate()), "localhost")
        chain = client._tlsConnection.get_peer_cert_chain()
        self.assertEqual([common_name(c) for c in chain], ["localhost", "wsheart test CA"])
        self.assertSpeaks(client, recorder, pump, b"hello")

    def test_describe(self) -> None:
        """
        describe() names the subject and the expiry, in UTC.
        """
        tls = ReloadableServerTLS(self.key_path, self.cert_path)
        expiry = tls.certificate.original.to_cryptography().not_valid_after_utc
        self.assertEqual(tls.describe(), f"CN=localhost, valid until {expiry:%Y-%m-%d %H:%M} UTC")

    def test_reload_serves_new_connections_the_new_certificate(self) -> None:
        """
        After a successful reload new connections get the new certificate;
        a connection opened before keeps its own and still works.  The
        reload is logged with the new certificate.
        """
        tls = ReloadableServerTLS(self.key_path, self.cert_path)
        old_client, old_recorder, old_pump = self.handshake(tls)
        self.install(*self.other_pair("localhost", "renewed"))
        renewed = read_certificate(self.cert_path)
        with capturedLogs() as events:
            self.assertTrue(tls.reload())
        self.assertEqual(tls.certificate.digest(), renewed.digest())
        self.assertEqual([e["log_level"] for e in events], [LogLevel.info])
        self.assertEqual(events[0]["certificate"], tls.describe())

        new_client, new_recorder, new_pump = self.handshake(tls)
        self.assertEqual(ssl.Certificate(new_client.getPeerCertificate()).digest(), renewed.digest())
        self.assertNotEqual(ssl.Certificate(old_client.getPeerCertificate()).digest(), renewed.digest())
        self.assertSpeaks(old_client, old_recorder, old_pump, b"still here")
        self.assertSpeaks(new_client, new_recorder, new_pump, b"new")

    def assertReloadKeepsTheOld(self, tls: ReloadableServerTLS, expected_error: str) -> None:
        before = tls.certificate.digest()
        with capturedLogs() as events:
            self.assertFalse(tls.reload())
        self.assertEqual(tls.certificate.digest(), before)
        (event,) = events
        self.assertEqual(event["log_level"], LogLevel.error)
        self.assertIn("keeping the current certificate", event["log_format"])
        self.assertIn(expected_error, event["error"])
        client, recorder, pump = self.handshake(tls)
        self.assertEqual(ssl.Certificate(client.getPeerCertificate()).digest(), before)
        self.assertSpeaks(client, recorder, pump, b"old certificate still served")

    def test_reload_with_missing_files_keeps_the_old(self) -> None:
        """
        A reload while the key file is missing fails, logs why, and new
        connections still get the old certificate.
        """
        tls = ReloadableServerTLS(self.key_path, self.cert_path)
        os.unlink(self.key_path)
        self.assertReloadKeepsTheOld(tls, f"cannot read {self.key_path}")

    def test_reload_with_a_truncated_certificate_keeps_the_old(self) -> None:
        """
        A certificate file cut short mid-write (no complete PEM block) does
        not replace the served certificate.
        """
        tls = ReloadableServerTLS(self.key_path, self.cert_path)
        with open(self.cert_path, "rb") as f:
            data = f.read()
        with open(self.cert_path, "wb") as f:
            f.write(data[:200])
        self.assertReloadKeepsTheOld(tls, "holds no PEM certificate")

    def test_reload_with_a_mismatched_pair_keeps_the_old(self) -> None:
        """
        A renewal that replaced the certificate but not yet the key is
        refused; the old pair keeps serving.
        """
        tls = ReloadableServerTLS(self.key_path, self.cert_path)
        _, other_cert = self.other_pair("localhost", "half-renewed")
        shutil.copyfile(other_cert, self.cert_path)
        self.assertReloadKeepsTheOld(tls, "do not make a usable pair")

    def test_reload_after_a_failure(self) -> None:
        """
        A failed reload does not stick: once the files are good again, the
        next reload takes them.
        """
        tls = ReloadableServerTLS(self.key_path, self.cert_path)
        new_key, new_cert = self.other_pair("localhost", "renewed")
        shutil.copyfile(new_cert, self.cert_path)  # the key comes later
        self.assertFalse(tls.reload())
        shutil.copyfile(new_key, self.key_path)
        self.assertTrue(tls.reload())
        client, _, _ = self.handshake(tls)
        self.assertEqual(ssl.Certificate(client.getPeerCertificate()).digest(), read_certificate(new_cert).digest())


class ServiceReloadTests(TLSTestCase):
    """
    SIGHUP's reload (L{WsheartService.reload}) re-reads the certificate and
    the API tokens together, and one broken does not stop the other.
    """

    def test_certificate_and_tokens_in_one_reload(self) -> None:
        """
        A renewed certificate is served after the reload even when the
        token file has become unreadable (whose tokens are kept); a new
        token file is taken even when the certificate files are broken.
        """
        from twisted.internet.testing import MemoryReactorClock

        from wsheart.tap import Options, makeService

        tokens_path = os.path.join(self.directory, "tokens")
        with open(tokens_path, "wb") as f:
            f.write(b"a-token-of-sixteen-or-more\n")
        options = Options()
        options.parseOptions([
            "--tls-endpoint", "tcp:0:interface=127.0.0.1", "--tls-key", self.key_path, "--tls-cert", self.cert_path,
            "--admin-endpoint", "tcp:0:interface=127.0.0.1", "--api-token-file", tokens_path,
        ])  # fmt: skip
        service = makeService(options, reactor=MemoryReactorClock())
        assert service.tls is not None and service.api_tokens is not None
        self.install(*self.other_pair("localhost", "renewed"))
        renewed = read_certificate(self.cert_path)
        os.remove(tokens_path)
        service.reload()
        self.assertEqual(service.tls.certificate.digest(), renewed.digest())
        self.assertEqual(service.api_tokens.tokens, (b"a-token-of-sixteen-or-more",))
        with open(self.key_path, "w") as f:
            f.write("not a key")
        with open(tokens_path, "wb") as f:
            f.write(b"another-token-0123456789\n")
        service.reload()
        self.assertEqual(service.tls.certificate.digest(), renewed.digest(), "the broken pair is not taken")
        self.assertEqual(service.api_tokens.tokens, (b"another-token-0123456789",))
