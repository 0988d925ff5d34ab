"""
Tests for L{qha.tls}: the endpoint strings of the AMQP port, mutual TLS
between brokers (and C{qha-admin}), the TLS options of C{twistd qha} and
C{qha-admin}, and SASL EXTERNAL. Certificates are made by C{trustme} in
each test; nothing is checked in. Connections run in memory
(L{twisted.test.iosim}), no sockets.
"""

from __future__ import annotations

import os
from typing import Any

import trustme
from OpenSSL import crypto
from pamqp import commands
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.test import iosim
from twisted.test.proto_helpers import EventLoggingObserver
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from qha.admin.cli import describeError, parseArguments
from qha.amqp import wire
from qha.test.support import LOOPBACK, Client, ProtocolTestCase, names
from qha.test.test_tap import parse
from qha.tls import (
    MutualTLS,
    amqpServerEndpoint,
    describeFailure,
    isTLSFailure,
    parseEndpoint,
    peerCommonName,
    withTLS,
)


class Certificates:
    """
    A CA and certificates it issued, written as PEM files into a directory.

    @ivar directory: where the files are.
    @ivar ca: the trustme CA.
    """

    def __init__(self, directory: str, ca: trustme.CA | None = None) -> None:
        """
        @param directory: made if missing.
        @param ca: the CA (a new one by default).
        """
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.ca = ca or trustme.CA()
        self.caFile = os.path.join(directory, "ca.pem")
        self.ca.cert_pem.write_to_path(self.caFile)

    def issue(self, name: str, *identities: str) -> tuple[str, str]:
        """
        A certificate for C{identities} (common name C{name}): its file and its key's file.
        """
        issued = self.ca.issue_cert(*(identities or (name,)), common_name=name)
        cert = os.path.join(self.directory, f"{name}.pem")
        key = os.path.join(self.directory, f"{name}.key")
        issued.cert_chain_pems[0].write_to_path(cert)
        issued.private_key_pem.write_to_path(key)
        return cert, key

    def mutual(self, name: str, *identities: str, peerName: str | None = None) -> MutualTLS:
        """
        L{MutualTLS} with a certificate of this CA for C{name}.
        """
        cert, key = self.issue(name, *identities)
        return MutualTLS.fromFiles(self.caFile, cert, key, peerName)


class Recorder(Protocol):
    """
    Remembers what it received and whether it lost its connection.
    """

    def __init__(self) -> None:
        """
        Nothing received yet.
        """
        self.received = b""
        self.lost: Any = None

    def dataReceived(self, data: bytes) -> None:
        """
        Remember C{data}.
        """
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        """
        Remember why.
        """
        self.lost = reason


def handshake(server: MutualTLS, client: MutualTLS, host: str = "node1") -> tuple[Recorder, Recorder]:
    """
    Connect a client with C{client}'s TLS to a listener with C{server}'s, in memory;
    the client writes C{hello}.

    @return: the server's and the client's protocol.
    """
    serverRecorder, clientRecorder = Recorder(), Recorder()
    clock = Clock()
    connectInMemory(
        server.wrapServerFactory(Factory.forProtocol(lambda: serverRecorder), clock=clock),
        TLSMemoryBIOFactory(
            client.clientOptions(host),
            True,
            Factory.forProtocol(lambda: clientRecorder),
            clock=clock,
        ),
        clock,
    )
    return serverRecorder, clientRecorder


def connectInMemory(serverFactory: Any, clientFactory: Any, clock: Clock) -> None:
    """
    Connect a client of C{clientFactory} to C{serverFactory} from 127.0.0.1:40000,
    in memory; the client writes C{hello}, then everything is delivered (C{clock}
    is the factories' clock: TLS sends small writes together on its next tick).
    """
    client = IPv4Address("TCP", "127.0.0.1", 40000)
    clientProtocol, _, pump = iosim.connectedServerAndClient(
        lambda: serverFactory.buildProtocol(client),
        lambda: clientFactory.buildProtocol(LOOPBACK),
        serverTransportFactory=lambda p: iosim.FakeTransport(
            p, isServer=True, hostAddress=LOOPBACK, peerAddress=client
        ),
        greet=False,
        clock=clock,
    )
    clientProtocol.write(b"hello")
    pump.flush()
    clock.advance(1)
    pump.flush()


class ParseEndpointTests(SynchronousTestCase):
    """
    L{parseEndpoint} splits endpoint strings as Twisted does.
    """

    def test_parts(self) -> None:
        """
        Kind, positional and keyword arguments; a backslash quotes C{:} and C{=}.
        """
        self.assertEqual(
            parseEndpoint(r"ssl:5671:privateKey=C\:\\k.pem:interface=127.0.0.1:a\=b"),
            ("ssl", ["5671", "a=b"], {"privateKey": "C:\\k.pem", "interface": "127.0.0.1"}),
        )


class AMQPEndpointTests(SynchronousTestCase):
    """
    L{amqpServerEndpoint} builds the AMQP listener of C{--port}.
    """

    def setUp(self) -> None:
        """
        A CA and a server certificate.
        """
        self.certs = Certificates(self.mktemp())
        self.cert, self.key = self.certs.issue("localhost", "localhost", "127.0.0.1")

    def test_withoutClientCA(self) -> None:
        """
        Without a client CA it is Twisted's C{serverFromString}, C{ssl:} included.
        """
        from twisted.internet import reactor

        self.assertIsInstance(amqpServerEndpoint(reactor, "tcp:0"), TCP4ServerEndpoint)
        self.assertIsInstance(
            amqpServerEndpoint(reactor, f"ssl:0:privateKey={self.key}:certKey={self.cert}"),
            SSL4ServerEndpoint,
        )

    def test_clientCA(self) -> None:
        """
        With a client CA, an C{ssl:} string becomes a TLS listener that asks for a
        client certificate; anything else is refused with one line.
        """
        from twisted.internet import reactor

        endpoint = amqpServerEndpoint(
            reactor,
            f"ssl:5671:privateKey={self.key}:certKey={self.cert}:interface=127.0.0.1",
            self.certs.caFile,
        )
        self.assertIsInstance(endpoint, SSL4ServerEndpoint)
        error = self.assertRaises(
            ValueError, amqpServerEndpoint, reactor, "tcp:5672", self.certs.caFile
        )
        self.assertIn("--tls-client-ca needs --port ssl:PORT", str(error))
        error = self.assertRaises(
            ValueError,
            amqpServerEndpoint,
            reactor,
            f"ssl:5671:privateKey={self.key}:sslmethod=TLSv1_METHOD",
            self.certs.caFile,
        )
        self.assertIn("sslmethod cannot be combined with --tls-client-ca", str(error))
        error = self.assertRaises(
            ValueError,
            amqpServerEndpoint,
            reactor,
            f"ssl:5671:privateKey={self.key}:certKey={self.cert}",
            "/nonexistent",
        )
        self.assertIn("cannot read --tls-client-ca /nonexistent", str(error))


class MutualTLSTests(SynchronousTestCase):
    """
    L{MutualTLS}: both sides present a certificate of the cluster's CA.
    """

    def setUp(self) -> None:
        """
        The cluster's CA and another, and a log observer.
        """
        directory = self.mktemp()
        self.cluster = Certificates(os.path.join(directory, "cluster"))
        self.other = Certificates(os.path.join(directory, "other"))
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]

    def refusals(self) -> list[str]:
        """
        The refusals the listener logged.
        """
        from twisted.logger import formatEvent

        return [
            formatEvent(event)
            for event in self.events
            if event.get("log_level") == LogLevel.warn and "refused a TLS" in event["log_format"]
        ]

    def test_sameCA(self) -> None:
        """
        Two certificates of one CA connect; nothing is logged.
        """
        server, client = handshake(
            self.cluster.mutual("node1"), self.cluster.mutual("node2", "node2")
        )
        self.assertEqual(server.received, b"hello")
        self.assertIsNone(server.lost)
        self.assertEqual(self.refusals(), [])

    def test_otherCA(self) -> None:
        """
        A client whose certificate comes from another CA is refused, and the
        listener says so in one line naming the peer's address.
        """
        rogue = self.other.mutual("rogue")
        # The rogue trusts the cluster's CA, so only its own certificate is wrong.
        rogue = MutualTLS(self.cluster.mutual("x").authority, rogue.certificate)
        server, client = handshake(self.cluster.mutual("node1"), rogue)
        self.assertEqual(server.received, b"")
        self.assertTrue(isTLSFailure(server.lost))
        self.assertTrue(isTLSFailure(client.lost))
        [line] = self.refusals()
        self.assertIn("refused a TLS connection to the AMP port from 127.0.0.1:40000: ", line)

    def test_serverOfOtherCA(self) -> None:
        """
        A client refuses a listener whose certificate comes from another CA.
        """
        server = MutualTLS(self.cluster.mutual("x").authority, self.other.mutual("node1").certificate)
        _, client = handshake(server, self.cluster.mutual("node2"))
        self.assertTrue(isTLSFailure(client.lost))
        self.assertIn("certificate verify failed", describeFailure(client.lost))

    def test_withoutClientCertificate(self) -> None:
        """
        A client that presents no certificate is refused.
        """
        plain = self.cluster.mutual("node2")
        plain = MutualTLS(plain.authority, plain.certificate)
        serverTLS = self.cluster.mutual("node1")
        from twisted.internet.ssl import optionsForClientTLS, trustRootFromCertificates

        noCertificate = optionsForClientTLS(
            "node1", trustRoot=trustRootFromCertificates(list(plain.authority))
        )
        server, clock = Recorder(), Clock()
        connectInMemory(
            serverTLS.wrapServerFactory(Factory.forProtocol(lambda: server), clock=clock),
            TLSMemoryBIOFactory(noCertificate, True, Factory.forProtocol(Recorder), clock=clock),
            clock,
        )
        self.assertEqual(server.received, b"")
        [line] = self.refusals()
        self.assertIn("from 127.0.0.1:40000", line)

    def test_peerName(self) -> None:
        """
        With a peer name, the listener's certificate must carry that name, not
        the host connected to.
        """
        server = self.cluster.mutual("node1", "qha.cluster")
        _, client = handshake(server, self.cluster.mutual("n2", peerName="qha.cluster"), "10.0.0.1")
        self.assertIsNone(client.lost)
        _, client = handshake(server, self.cluster.mutual("n3"), "10.0.0.1")
        self.assertTrue(isTLSFailure(client.lost))
        self.assertIn("the peer's certificate is not for", describeFailure(client.lost))
        self.assertIn("10.0.0.1", describeFailure(client.lost))

    def test_withTLS(self) -> None:
        """
        L{withTLS} leaves an endpoint alone without TLS and wraps it with.
        """
        endpoint = object()
        self.assertIs(withTLS(None, "node1", endpoint), endpoint)  # type: ignore[arg-type]
        self.assertIsNot(withTLS(self.cluster.mutual("n"), "node1", endpoint), endpoint)  # type: ignore[arg-type]

    def test_badFiles(self) -> None:
        """
        A file that cannot be read, or is no certificate, is one line naming it.
        """
        cert, key = self.cluster.issue("node1")
        error = self.assertRaises(ValueError, MutualTLS.fromFiles, "/nonexistent", cert, key)
        self.assertEqual(
            str(error), "cannot read --ha-tls-ca /nonexistent: No such file or directory"
        )
        error = self.assertRaises(ValueError, MutualTLS.fromFiles, key, cert, key)
        self.assertEqual(str(error), f"--ha-tls-ca {key} holds no PEM certificate")
        error = self.assertRaises(ValueError, MutualTLS.fromFiles, self.cluster.caFile, cert, cert)
        self.assertIn(f"--ha-tls-ca/--ha-tls-cert/--ha-tls-key {cert} and {cert}", str(error))
        # The key may be in the certificate's file.
        both = os.path.join(self.cluster.directory, "both.pem")
        with open(both, "wb") as f, open(cert, "rb") as c, open(key, "rb") as k:
            f.write(c.read() + k.read())
        self.assertIsInstance(MutualTLS.fromFiles(self.cluster.caFile, both), MutualTLS)


class OptionTests(SynchronousTestCase):
    """
    The TLS options of C{twistd qha} and C{qha-admin}.
    """

    def setUp(self) -> None:
        """
        A CA and a certificate.
        """
        self.certs = Certificates(self.mktemp())
        self.cert, self.key = self.certs.issue("node1", "node1", "127.0.0.1")

    def test_haTLS(self) -> None:
        """
        C{--ha-tls-ca}, C{--ha-tls-cert} and C{--ha-tls-key} load the cluster's
        mutual TLS; without them there is none.
        """
        self.assertIsNone(parse()["haTLS"])
        options = parse(
            "--ha-tls-ca", self.certs.caFile, "--ha-tls-cert", self.cert, "--ha-tls-key",
            self.key, "--ha-tls-peer-name", "qha.cluster",
        )
        self.assertIsInstance(options["haTLS"], MutualTLS)
        self.assertEqual(options["haTLS"].peerName, "qha.cluster")

    def test_haTLSErrors(self) -> None:
        """
        An incomplete set, an C{ssl:} AMP port or a bad file is one line.
        """
        error = self.assertRaises(usage.UsageError, parse, "--ha-tls-cert", self.cert)
        self.assertEqual(
            str(error),
            "--ha-tls-cert needs --ha-tls-ca and --ha-tls-cert (and --ha-tls-key unless"
            " the key is in the --ha-tls-cert file)",
        )
        error = self.assertRaises(
            usage.UsageError, parse, "--ha-tls-ca", self.certs.caFile, "--ha-tls-cert",
            self.cert, "--ha-port", f"ssl:5673:privateKey={self.key}",
        )
        self.assertIn("give --ha-port as tcp:PORT", str(error))
        error = self.assertRaises(
            usage.UsageError, parse, "--ha-tls-ca", "/nonexistent", "--ha-tls-cert", self.cert
        )
        self.assertIn("cannot read --ha-tls-ca /nonexistent", str(error))

    def test_clientCA(self) -> None:
        """
        C{--tls-client-ca} needs an C{ssl:} port; C{--tls-require-client-cert yes}
        needs C{--tls-client-ca}.
        """
        parse(
            "--port", f"ssl:0:privateKey={self.key}:certKey={self.cert}", "--tls-client-ca",
            self.certs.caFile, "--tls-require-client-cert", "yes",
        )
        error = self.assertRaises(usage.UsageError, parse, "--tls-require-client-cert", "yes")
        self.assertEqual(str(error), "--tls-require-client-cert yes needs --tls-client-ca")
        error = self.assertRaises(usage.UsageError, parse, "--tls-client-ca", self.certs.caFile)
        self.assertIn("--tls-client-ca needs --port ssl:PORT", str(error))

    def test_sslPortWithMissingFile(self) -> None:
        """
        An C{ssl:} port whose key file is missing is one line, not a traceback.
        """
        error = self.assertRaises(usage.UsageError, parse, "--port", "ssl:0:privateKey=/nonexistent")
        self.assertIn("--port: 'ssl:0:privateKey=/nonexistent' is not a valid endpoint", str(error))

    def test_admin(self) -> None:
        """
        C{qha-admin --tls-ca --tls-cert --tls-key} load mutual TLS; an
        incomplete set is a usage error.
        """
        arguments = parseArguments(
            ["--tls-ca", self.certs.caFile, "--tls-cert", self.cert, "--tls-key", self.key, "ping"]
        )
        self.assertIsInstance(arguments.tls, MutualTLS)
        self.assertIsNone(parseArguments(["ping"]).tls)
        self.assertRaises(SystemExit, parseArguments, ["--tls-cert", self.cert, "ping"])

    def test_adminDescribesTLSFailure(self) -> None:
        """
        A failed handshake is told in words, with the options to give.
        """
        from OpenSSL import SSL

        error = SSL.Error([("SSL routines", "", "certificate verify failed")])
        self.assertEqual(
            describeError(error, "node1:5673"),
            "node1:5673 failed the TLS handshake: certificate verify failed (give --tls-ca,"
            " --tls-cert and --tls-key of the cluster's CA if its --ha-port uses TLS)",
        )


@implementer(ISSLTransport)
class CertifiedTransport(StringTransport):  # type: ignore[misc]
    """
    A transport of a TLS connection whose client presented C{certificate}.
    """

    def __init__(self, certificate: crypto.X509 | None, **kwargs: Any) -> None:
        """
        @param certificate: the client's certificate, or L{None}.
        """
        super().__init__(**kwargs)
        self.certificate = certificate

    def getPeerCertificate(self) -> crypto.X509 | None:
        """
        The client's certificate.
        """
        return self.certificate


class CertifiedClient(Client):
    """
    A test client on a TLS connection with a client certificate.
    """

    def __init__(self, factory: Any, certificate: crypto.X509 | None) -> None:
        """
        @param certificate: the client's certificate.
        """
        self.transport = CertifiedTransport(certificate, peerAddress=LOOPBACK)
        self.server = factory.buildProtocol(LOOPBACK)
        self.server.makeConnection(self.transport)
        self.lost = False


class ExternalTests(ProtocolTestCase):
    """
    SASL EXTERNAL, as RabbitMQ's C{rabbitmq_auth_mechanism_ssl}: offered on a TLS
    connection with a client certificate, the user is its common name.
    """

    def certificate(self, name: str) -> crypto.X509:
        """
        A certificate whose common name is C{name}.
        """
        issued = trustme.CA().issue_cert(name, common_name=name)
        return crypto.load_certificate(crypto.FILETYPE_PEM, issued.cert_chain_pems[0].bytes())

    def connectWith(self, certificate: crypto.X509 | None) -> CertifiedClient:
        """
        A client with C{certificate}, disconnected at cleanup.
        """
        client = CertifiedClient(self.factory, certificate)
        self.addCleanup(client.disconnect)
        return client

    def mechanisms(self, client: Client) -> list[str]:
        """
        The mechanisms connection.start offers C{client}.
        """
        client.send(wire.PROTOCOL_HEADER)
        [(_, start)] = client.received()
        assert isinstance(start, commands.Connection.Start)
        mechanisms = start.mechanisms
        return str(mechanisms.decode() if isinstance(mechanisms, bytes) else mechanisms).split()

    def test_offered(self) -> None:
        """
        EXTERNAL is offered with a client certificate only.
        """
        self.assertEqual(self.mechanisms(self.connect()), ["PLAIN", "AMQPLAIN"])
        self.assertEqual(self.mechanisms(self.connectWith(None)), ["PLAIN", "AMQPLAIN"])
        self.assertEqual(
            self.mechanisms(self.connectWith(self.certificate("bob"))),
            ["PLAIN", "AMQPLAIN", "EXTERNAL"],
        )

    def test_login(self) -> None:
        """
        The user is the certificate's common name; the response is ignored.
        """
        client = self.connectWith(self.certificate("bob"))
        frames = client.handshake(mechanism="EXTERNAL", response="")
        self.assertEqual(names(frames)[-1], (0, "Connection.OpenOk"))
        self.assertEqual(client.server.user, "bob")
        self.assertEqual(peerCommonName(client.transport), "bob")

    def test_unknownUser(self) -> None:
        """
        A certificate whose common name is no user is refused with 403.
        """
        client = self.connectWith(self.certificate("mallory"))
        frames = client.handshake(mechanism="EXTERNAL", response="")
        [(_, close)] = frames[-1:]
        self.assertIsInstance(close, commands.Connection.Close)
        self.assertEqual(close.reply_code, 403)
        self.assertIn("'mallory' with mechanism EXTERNAL", close.reply_text)

    def test_withoutCertificate(self) -> None:
        """
        EXTERNAL without a client certificate is refused with 403.
        """
        client = self.connect()
        frames = client.handshake(mechanism="EXTERNAL", response="")
        [(_, close)] = frames[-1:]
        self.assertEqual(close.reply_code, 403)
        self.assertIn("EXTERNAL needs a client certificate", close.reply_text)
