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
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from wsheart.tls import (
    ClientTLS,
    HostnameMismatch,
    NoApplicationProtocol,
    ReloadableServerTLS,
    SSLEndpoint,
    TLSConfigError,
    describe_tls_failure,
    load_context,
    read_pair,
    select_http11,
    server_context,
)

from .loopback import make_ca, make_server_cert


class Echo(Protocol):
    reason: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason: Any) -> None:
        self.reason = reason


class Recorder(Protocol):
    reason: Any = None

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.reason = reason


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
        assert service.tls and service.api_tokens is not None
        self.install(*self.other_pair("localhost", "renewed"))
        renewed = read_certificate(self.cert_path)
        os.remove(tokens_path)
        service.reload()
        self.assertEqual(service.tls[0].certificate.digest(), renewed.digest())
        self.assertEqual(service.api_tokens.tokens, (b"a-token-of-sixteen-or-more",))
        with open(self.key_path, "w") as f:
            f.write("not a key")
        with open(tokens_path, "wb") as f:
            f.write(b"another-token-0123456789\n")
        service.reload()
        self.assertEqual(service.tls[0].certificate.digest(), renewed.digest(), "the broken pair is not taken")
        self.assertEqual(service.api_tokens.tokens, (b"another-token-0123456789",))


def session_reused(connection: SSL.Connection) -> bool:
    """
    Whether OpenSSL resumed a session on C{connection} (pyOpenSSL has no
    public accessor).
    """
    from OpenSSL._util import lib

    return bool(lib.SSL_session_reused(connection._ssl))


@implementer(IOpenSSLClientConnectionCreator)
class _OfferingALPN:
    """
    A client connection creator that trusts everything and offers
    C{protocols} over ALPN, with TLS versions from C{low} to C{high}: the
    browser's side of the negotiation, in memory.
    """

    def __init__(self, protocols: list[bytes], low: int = SSL.TLS1_2_VERSION, high: int = 0, ciphers: str = "") -> None:
        self.context = SSL.Context(SSL.TLS_METHOD)
        if protocols:
            self.context.set_alpn_protos(protocols)
        self.context.set_min_proto_version(low)
        self.context.set_max_proto_version(high)
        if ciphers:
            self.context.set_cipher_list(ciphers.encode("ascii"))

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.context, None)


class ServerPolicyTests(TLSTestCase):
    """
    What every wsheart TLS listener negotiates (wsheart.tls.server_context):
    http/1.1 over ALPN, the RFC 7301 alert for a client that offers only
    other protocols, TLS 1.2 as the floor, forward-secret TLS 1.2 suites,
    resumption, and a new ticket key every hour.
    """

    def connect(self, tls: ReloadableServerTLS, creator: Any) -> tuple[Any, Any, Recorder, iosim.IOPump]:
        clock = Clock()
        recorder = Recorder()
        client_factory = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(lambda: recorder), clock=clock)
        server_factory = TLSMemoryBIOFactory(tls, False, Factory.forProtocol(Echo), clock=clock)
        server = server_factory.buildProtocol(None)
        client = client_factory.buildProtocol(None)
        pump = iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), greet=False, clock=clock
        )
        client.write(b"hello")
        pump.flush()
        return server, client, recorder, pump

    def test_alpn_http11_chosen_from_a_browsers_offer(self) -> None:
        """
        A client offering h2 and http/1.1 (what Chromium and curl offer)
        gets http/1.1 and speaks: the handshake that failed on every
        ALPN-offering client before.
        """
        server, client, recorder, _pump = self.connect(
            ReloadableServerTLS(self.key_path, self.cert_path), _OfferingALPN([b"h2", b"http/1.1"])
        )
        self.assertEqual(recorder.received, b"hello")
        self.assertEqual(client.negotiatedProtocol, b"http/1.1")
        self.assertEqual(server.negotiatedProtocol, b"http/1.1")

    def test_no_alpn_offered_still_speaks(self) -> None:
        """
        A client that offers no ALPN (Autobahn's, websockets', Node ws')
        negotiates none and speaks.
        """
        _server, client, recorder, _pump = self.connect(ReloadableServerTLS(self.key_path, self.cert_path), _OfferingALPN([]))
        self.assertEqual(recorder.received, b"hello")
        self.assertIsNone(client.negotiatedProtocol)

    def test_h2_only_is_refused_with_no_application_protocol(self) -> None:
        """
        A client offering only h2 (WebSocket over HTTP/2 is not served) is
        refused during the handshake with the no_application_protocol
        alert.
        """
        server, client, recorder, _pump = self.connect(ReloadableServerTLS(self.key_path, self.cert_path), _OfferingALPN([b"h2"]))
        self.assertEqual(recorder.received, b"")
        self.assertTrue(client.disconnected and server.disconnected)
        self.assertTrue(recorder.reason.check(SSL.Error))
        # The alert's name on the wire is read by a client of the system's
        # OpenSSL in test_integration_tls (this OpenSSL's message varies).

    def test_alpn_choice(self) -> None:
        """
        The server's ALPN callback: http/1.1 wherever it is in the offer;
        any offer without it raises NoApplicationProtocol, which pyOpenSSL
        turns into the fatal alert, naming what was offered.
        """
        self.assertEqual(select_http11(None, [b"h2", b"http/1.1"]), b"http/1.1")
        self.assertEqual(select_http11(None, [b"http/1.1"]), b"http/1.1")
        for offer in ([b"h2"], [b"h2", b"acme-tls/1"], [b"http/1.0"]):
            with self.assertRaises(NoApplicationProtocol) as caught:
                select_http11(None, offer)
            self.assertIn(offer[0].decode(), str(caught.exception))
            self.assertIn("this server speaks http/1.1 only", str(caught.exception))

    def test_tls_1_1_is_refused(self) -> None:
        """
        TLS 1.2 is the floor: a client that goes no higher than TLS 1.1
        gets no connection.
        """
        _server, client, recorder, _pump = self.connect(
            ReloadableServerTLS(self.key_path, self.cert_path),
            _OfferingALPN([], low=SSL.TLS1_VERSION, high=SSL.TLS1_1_VERSION, ciphers="DEFAULT:@SECLEVEL=0"),
        )
        self.assertEqual(recorder.received, b"")
        self.assertTrue(client.disconnected)

    def test_tls_1_2_without_forward_secrecy_is_refused(self) -> None:
        """
        TLS 1.2 suites are ECDHE only: a client offering only RSA key
        exchange gets no connection; one offering ECDHE-ECDSA-AES128-GCM
        speaks.
        """
        tls = ReloadableServerTLS(self.key_path, self.cert_path)
        _server, _client, recorder, _pump = self.connect(
            tls, _OfferingALPN([], high=SSL.TLS1_2_VERSION, ciphers="AES128-GCM-SHA256")
        )
        self.assertEqual(recorder.received, b"")
        _server, client, recorder, _pump = self.connect(
            tls, _OfferingALPN([], high=SSL.TLS1_2_VERSION, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
        )
        self.assertEqual(recorder.received, b"hello")
        self.assertEqual(client.getHandle().get_cipher_name(), "ECDHE-ECDSA-AES128-GCM-SHA256")

    def test_idle_connections_release_their_buffers(self) -> None:
        """
        The server context frees a connection's read and write buffers
        while it is idle (about 34 KiB each), whatever Twisted's defaults.
        """
        context = server_context(*read_pair(self.key_path, self.cert_path))
        # set_mode adds nothing here and answers the mode in force.
        self.assertTrue(context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS)

    def test_ticket_key_replaced_after_its_lifetime(self) -> None:
        """
        The context (and with it OpenSSL's ticket key) serves connections
        for an hour; the first connection after that gets a new one, with
        the same certificate.
        """
        clock = Clock()
        tls = ReloadableServerTLS(self.key_path, self.cert_path, clock=clock)
        first = tls.serverConnectionForTLS(None).get_context()
        clock.advance(3599)
        self.assertIs(tls.serverConnectionForTLS(None).get_context(), first)
        clock.advance(1)
        second = tls.serverConnectionForTLS(None).get_context()
        self.assertIsNot(second, first)
        self.assertIs(tls.serverConnectionForTLS(None).get_context(), second)
        _server, _client, recorder, _pump = self.connect(tls, _OfferingALPN([b"http/1.1"]))
        self.assertEqual(recorder.received, b"hello")

    def test_sessions_resume(self) -> None:
        """
        A client that presents the session of an earlier connection (a
        TLS 1.2 session here; TLS 1.3 tickets are checked over real sockets
        in test_integration_tls) resumes it: no full handshake.
        """
        tls = ReloadableServerTLS(self.key_path, self.cert_path)
        creator = _OfferingALPN([b"http/1.1"], high=SSL.TLS1_2_VERSION)
        _server, client, recorder, _pump = self.connect(tls, creator)
        self.assertEqual(recorder.received, b"hello")
        session = client.getHandle().get_session()
        self.assertFalse(session_reused(client.getHandle()))

        class Resuming(_OfferingALPN):
            def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
                connection = SSL.Connection(creator.context, None)
                connection.set_session(session)
                return connection

        _server, client, recorder, _pump = self.connect(tls, Resuming([]))
        self.assertEqual(recorder.received, b"hello")
        self.assertTrue(session_reused(client.getHandle()))


class ClientTLSTests(TLSTestCase):
    """
    wsheart.tls.ClientTLS, the client side of every wss:// connection: the
    certificate must name the host dialled in a subjectAltName, a DNS name
    or an IP address; anything else fails the handshake with a
    HostnameMismatch that describe_tls_failure words in one line.
    """

    def dial(self, hostname: str, cert_host: str, san: bool = True) -> Recorder:
        """
        A client dialling C{hostname} (trusting the test CA) to a server
        whose certificate names C{cert_host}; what the client received.
        """
        key_path, cert_path = make_server_cert(self.directory, self.ca_key, self.ca_cert, cert_host, stem="dialled", san=san)
        clock = Clock()
        recorder = Recorder()
        client_factory = TLSMemoryBIOFactory(
            ClientTLS(hostname, read_certificate(self.ca_path)), True, Factory.forProtocol(lambda: recorder), clock=clock
        )
        server_factory = TLSMemoryBIOFactory(ReloadableServerTLS(key_path, cert_path), False, Factory.forProtocol(Echo), clock=clock)
        server = server_factory.buildProtocol(None)
        client = client_factory.buildProtocol(None)
        pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), greet=False, clock=clock)
        client.write(b"hello")
        pump.flush()
        self.client = client
        return recorder

    def assertRefused(self, recorder: Recorder, hostname: str, why: str) -> None:
        self.assertEqual(recorder.received, b"")
        self.assertIsNotNone(recorder.reason)
        self.assertTrue(recorder.reason.check(HostnameMismatch), recorder.reason)
        line = describe_tls_failure(recorder.reason)
        assert line is not None
        self.assertIn(f"does not match hostname {hostname}", line)
        self.assertIn(why, line)
        self.assertNotIn("\n", line)

    def test_matching_dns_name(self) -> None:
        """
        A certificate for localhost, dialled as localhost: connected, and
        http/1.1 offered and chosen over ALPN.
        """
        recorder = self.dial("localhost", "localhost")
        self.assertEqual(recorder.received, b"hello")
        self.assertEqual(self.client.negotiatedProtocol, b"http/1.1")

    def test_matching_ip_address(self) -> None:
        """
        A certificate with IP 127.0.0.1 in its subjectAltName, dialled as
        127.0.0.1: connected.
        """
        self.assertEqual(self.dial("127.0.0.1", "127.0.0.1").received, b"hello")

    def test_cn_only_certificate_refused(self) -> None:
        """
        CN=localhost and no subjectAltName (what `openssl req -subj
        /CN=localhost` makes) is refused, even though the CN is the name
        dialled: no browser takes it either.
        """
        self.assertRefused(self.dial("localhost", "localhost", san=False), "localhost", "no subjectAltName")

    def test_cn_only_certificate_for_another_host_refused(self) -> None:
        """
        CN=otherhost, no subjectAltName, dialled as localhost: refused (the
        client let this one through before, after printing a traceback).
        """
        self.assertRefused(self.dial("localhost", "otherhost", san=False), "localhost", "no subjectAltName")

    def test_wrong_dns_name_refused(self) -> None:
        """
        A certificate for wrong.example dialled as localhost: refused,
        naming the host.
        """
        self.assertRefused(self.dial("localhost", "wrong.example"), "localhost", "localhost")

    def test_wrong_ip_address_refused(self) -> None:
        """
        A certificate for 127.0.0.2 dialled as 127.0.0.1, and one for the
        DNS name localhost dialled as 127.0.0.1: both refused.
        """
        self.assertRefused(self.dial("127.0.0.1", "127.0.0.2"), "127.0.0.1", "127.0.0.1")
        self.assertRefused(self.dial("127.0.0.1", "localhost"), "127.0.0.1", "127.0.0.1")

    def test_ip_address_in_cn_only_refused(self) -> None:
        """
        CN=127.0.0.1 without a subjectAltName, dialled as 127.0.0.1:
        refused.
        """
        self.assertRefused(self.dial("127.0.0.1", "127.0.0.1", san=False), "127.0.0.1", "no subjectAltName")

    def test_untrusted_chain_is_not_a_name_problem(self) -> None:
        """
        A chain the client does not trust is refused by OpenSSL's own check
        and said to be untrusted, not mismatched.
        """
        other_dir = os.path.join(self.directory, "other")
        os.makedirs(other_dir)
        other_key, other_cert, _path = make_ca(other_dir, "another CA")
        key_path, cert_path = make_server_cert(other_dir, other_key, other_cert, "localhost")
        self.install(key_path, cert_path)
        clock = Clock()
        recorder = Recorder()
        client_factory = TLSMemoryBIOFactory(
            ClientTLS("localhost", read_certificate(self.ca_path)), True, Factory.forProtocol(lambda: recorder), clock=clock
        )
        server_factory = TLSMemoryBIOFactory(ReloadableServerTLS(self.key_path, self.cert_path), False, Factory.forProtocol(Echo), clock=clock)
        server = server_factory.buildProtocol(None)
        client = client_factory.buildProtocol(None)
        iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), greet=False, clock=clock).flush()
        self.assertFalse(recorder.reason.check(HostnameMismatch))
        self.assertEqual(
            describe_tls_failure(recorder.reason),
            "TLS: the server's certificate is not trusted (certificate verify failed; see --ca)",
        )


class SSLEndpointTests(unittest.TestCase):
    """
    An ssl: --endpoint read as Twisted reads it, served as tcp: plus
    wsheart's TLS.
    """

    def test_port_and_files(self) -> None:
        """
        The port, interface and backlog go to the tcp: listener; the files
        to the TLS; certKey defaults to privateKey, as in Twisted.
        """
        endpoint = SSLEndpoint.parse("ssl:443:privateKey=/k.pem:certKey=/c.pem:interface=127.0.0.1:backlog=4096")
        self.assertEqual(endpoint.listen, "tcp:port=443:interface=127.0.0.1:backlog=4096")
        self.assertEqual((endpoint.key_path, endpoint.cert_path, endpoint.chain_path), ("/k.pem", "/c.pem", None))
        both = SSLEndpoint.parse("ssl:port=8443:privateKey=/both.pem:extraCertChain=/chain.pem")
        self.assertEqual(both.listen, "tcp:port=8443")
        self.assertEqual((both.key_path, both.cert_path, both.chain_path), ("/both.pem", "/both.pem", "/chain.pem"))

    def test_escapes(self) -> None:
        """
        Twisted's backslash escapes are undone for the files and kept for
        the listener: an IPv6 interface, a path with a colon.
        """
        endpoint = SSLEndpoint.parse(r"ssl:443:interface=\:\:1:privateKey=/a\:b.pem")
        self.assertEqual(endpoint.listen, r"tcp:port=443:interface=\:\:1")
        self.assertEqual(endpoint.key_path, "/a:b.pem")

    def test_refused_options(self) -> None:
        """
        Options that would undo the TLS policy, unknown options, a missing
        or doubled port: each a ValueError that says what to do.
        """
        for description, words in [
            ("ssl:443:sslmethod=TLSv1_METHOD", "drop sslmethod="),
            ("ssl:443:dhParameters=dh.pem", "drop dhParameters="),
            ("ssl:443:privatekey=k.pem", "unknown option privatekey"),
            ("ssl:privateKey=k.pem", "needs a port"),
            ("ssl:443:port=444", "the port is given twice"),
            ("ssl:443:k.pem", "one positional argument"),
        ]:
            with self.assertRaises(ValueError) as caught:
                SSLEndpoint.parse(description)
            self.assertIn(words, str(caught.exception), description)


class TLSOptionsTests(TLSTestCase):
    """
    How twistd wsheart's options make TLS listeners: an ssl: --endpoint and
    --tls-endpoint both end up as a plain listener wrapped in wsheart's TLS,
    both reloaded by SIGHUP; mistakes are usage errors that say what to do.
    """

    def parse(self, *argv: str) -> Any:
        from wsheart.tap import Options

        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_ssl_endpoint_and_tls_endpoint(self) -> None:
        """
        An ssl: endpoint becomes tcp: with its own files; a --tls-endpoint
        keeps its description with --tls-key/--tls-cert; the daemon
        reloads both.
        """
        from twisted.internet.testing import MemoryReactorClock

        from wsheart.tap import makeService

        options = self.parse(
            "--endpoint", f"ssl:8443:interface=127.0.0.1:privateKey={self.key_path}:certKey={self.cert_path}",
            "--tls-endpoint", "tcp:9443:interface=127.0.0.1", "--tls-key", self.key_path, "--tls-cert", self.cert_path,
        )  # fmt: skip
        [(first, first_tls), (second, second_tls)] = options["tls-listeners"]
        self.assertEqual(first, "tcp:port=8443:interface=127.0.0.1:backlog=4096")
        self.assertEqual(second, "tcp:9443:interface=127.0.0.1:backlog=4096")
        self.assertIsNot(first_tls, second_tls)
        service = makeService(options, reactor=MemoryReactorClock())
        self.assertEqual(service.tls, (first_tls, second_tls))
        self.install(*self.other_pair("localhost", "renewed"))
        renewed = read_certificate(self.cert_path)
        service.reload()  # what SIGHUP does
        self.assertEqual([tls.certificate.digest() for tls in service.tls], [renewed.digest()] * 2)

    def test_mistakes_are_usage_errors(self) -> None:
        """
        A missing file, an ssl: option that would change the TLS policy, an
        ssl: description given to --tls-endpoint: each a UsageError naming
        the problem.
        """
        from twisted.python import usage

        missing = os.path.join(self.directory, "missing.pem")
        for argv, words in [
            (["--endpoint", f"ssl:8443:privateKey={missing}"], "cannot read"),
            (["--endpoint", f"ssl:8443:privateKey={self.key_path}:certKey={self.cert_path}:sslmethod=TLSv1_2_METHOD"], "drop sslmethod="),
            (["--tls-endpoint", f"ssl:8443:privateKey={self.key_path}", "--tls-key", self.key_path, "--tls-cert", self.cert_path], "give a plain endpoint"),
        ]:
            with self.assertRaises(usage.UsageError) as caught:
                self.parse(*argv)
            self.assertIn(words, str(caught.exception), argv)
