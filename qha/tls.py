"""
TLS for every port of a broker, with Twisted's own TLS (pyOpenSSL underneath).

Two shapes:

  - The AMQP port takes Twisted endpoint strings, C{ssl:5671:privateKey=KEY:certKey=CERT}.
    With C{--tls-client-ca} the listener also asks clients for a certificate of that CA
    (L{amqpServerEndpoint}); a client that presents one may log in with SASL EXTERNAL
    as the certificate's common name (L{peerCommonName}).
  - The AMP port, the links between brokers and C{qha-admin} use mutual TLS
    (L{MutualTLS}): each side presents a certificate of the cluster's CA and checks the
    other's against it. A connection that fails the check is refused, and the refusal is
    logged in one line naming the peer's address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString, wrapClientTLS
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    ISSLTransport,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer


def _read(path: str, what: str) -> bytes:
    """
    The bytes of C{path}.

    @param what: the option that named it, for the message.
    @raise ValueError: one line naming the option and the file.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise ValueError(f"cannot read {what} {path}: {error.strerror or error}") from None


def loadAuthority(path: str, what: str = "the CA file") -> list[Certificate]:
    """
    Every certificate of a PEM file (a CA bundle may hold several).

    @param what: the option that named it, for the message.
    @raise ValueError: one line, if the file cannot be read or holds no certificate.
    """
    data = _read(path, what)
    marker = b"-----BEGIN CERTIFICATE-----"
    blocks = [marker + part for part in data.split(marker)[1:]]
    if not blocks:
        raise ValueError(f"{what} {path} holds no PEM certificate")
    try:
        return [Certificate.loadPEM(block) for block in blocks]
    except Exception as error:
        raise ValueError(f"{what} {path} is not a PEM certificate: {error}") from None


def loadPrivateCertificate(certPath: str, keyPath: str | None, what: str) -> PrivateCertificate:
    """
    A certificate and its private key from PEM files (the key may be in the same file).

    @param what: the options that named them, for the message.
    @raise ValueError: one line, if either cannot be read or they do not match.
    """
    certificate = _read(certPath, what)
    key = certificate if keyPath is None else _read(keyPath, what)
    try:
        return PrivateCertificate.loadPEM(key + b"\n" + certificate)
    except Exception as error:
        raise ValueError(
            f"{what} {certPath}{'' if keyPath is None else ' and ' + keyPath}:"
            f" not a PEM certificate and its private key ({error or type(error).__name__})"
        ) from None


def describeFailure(reason: Failure | BaseException) -> str:
    """
    A TLS failure in words: OpenSSL's C{[('SSL routines', '', 'certificate verify
    failed')]} becomes C{certificate verify failed}.
    """
    error = reason.value if isinstance(reason, Failure) else reason
    if isinstance(error, VerificationError):
        names = [str(getattr(e, "mismatched_id", e)) for e in error.errors]
        return f"the peer's certificate is not for {', '.join(names)}"
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        texts = [entry[-1] for entry in error.args[0] if isinstance(entry, tuple) and entry]
        if texts:
            return "; ".join(str(text) for text in texts)
    return str(error) or type(error).__name__


def isTLSFailure(reason: Failure | BaseException) -> bool:
    """
    Whether C{reason} is a failed TLS handshake, the peer's name included (not a
    connection closed or refused).
    """
    error = reason.value if isinstance(reason, Failure) else reason
    return isinstance(error, (SSL.Error, VerificationError))


@implementer(IHandshakeListener)
class _HandshakeWatch(ProtocolWrapper):
    """
    Between the TLS layer and the protocol it carries: logs a connection whose
    handshake failed (a peer without a certificate of the CA), in one line.
    """

    log = Logger()

    def __init__(self, factory: Any, wrappedProtocol: IProtocol) -> None:
        """
        @param factory: the L{_WatchingFactory} that made it.
        @param wrappedProtocol: the protocol the TLS connection carries.
        """
        super().__init__(factory, wrappedProtocol)
        self.handshakeDone = False

    def handshakeCompleted(self) -> None:
        """
        The peer's certificate was accepted; tell the protocol if it listens.
        """
        self.handshakeDone = True
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Log a failed handshake, then pass the loss on.
        """
        if not self.handshakeDone and isTLSFailure(reason):
            assert isinstance(self.factory, _WatchingFactory)
            peer: Any = self.transport.getPeer() if self.transport is not None else None
            self.log.warn(
                "refused a TLS connection to the {port} from {peer}: {reason}",
                port=self.factory.what,
                peer=f"{peer.host}:{peer.port}" if hasattr(peer, "port") else str(peer),
                reason=describeFailure(reason),
            )
        super().connectionLost(reason)


class _WatchingFactory(WrappingFactory):
    """
    Wraps each protocol in a L{_HandshakeWatch}.
    """

    protocol = _HandshakeWatch
    noisy = False

    def __init__(self, wrappedFactory: IProtocolFactory, what: str) -> None:
        """
        @param what: the port's name for the log (C{AMP port}).
        """
        super().__init__(wrappedFactory)
        self.what = what


@dataclass(frozen=True)
class MutualTLS:
    """
    The cluster's mutual TLS: the CA every broker's (and C{qha-admin}'s) certificate
    comes from, this side's certificate and key, and optionally the name every
    broker's certificate must carry.

    @ivar authority: the cluster's CA certificates.
    @ivar certificate: this side's certificate and private key.
    @ivar peerName: the name (DNS or IP) a broker's certificate must carry when this
        side connects to it; L{None}: the address's host, as HTTPS does.
    """

    authority: tuple[Certificate, ...]
    certificate: PrivateCertificate
    peerName: str | None = None

    @classmethod
    def fromFiles(
        cls,
        authority: str,
        certificate: str,
        key: str | None = None,
        peerName: str | None = None,
        options: str = "--ha-tls-ca/--ha-tls-cert/--ha-tls-key",
    ) -> MutualTLS:
        """
        Load the CA, the certificate and its key from PEM files.

        @param key: the private key's file; L{None}: it is in C{certificate}'s file.
        @param options: the options that named the files, for the message.
        @raise ValueError: one line naming the file that is wrong.
        """
        return cls(
            tuple(loadAuthority(authority, options.split("/")[0])),
            loadPrivateCertificate(certificate, key, options),
            peerName,
        )

    def serverOptions(self) -> CertificateOptions:
        """
        What the listening side does: present this certificate, require the peer's,
        and check it against the CA.
        """
        return CertificateOptions(
            privateKey=self.certificate.privateKey.original,
            certificate=self.certificate.original,
            # A trust root makes OpenSSL require the peer's certificate.
            trustRoot=trustRootFromCertificates(list(self.authority)),
        )

    def clientOptions(self, host: str) -> IOpenSSLClientConnectionCreator:
        """
        What the connecting side does: present this certificate, and check the
        listener's against the CA and the name (L{peerName}, else C{host}).
        """
        return optionsForClientTLS(
            self.peerName or host,
            trustRoot=trustRootFromCertificates(list(self.authority)),
            clientCertificate=self.certificate,
        )

    def wrapClientEndpoint(self, host: str, endpoint: IStreamClientEndpoint) -> IStreamClientEndpoint:
        """
        C{endpoint} with TLS on top (see L{clientOptions}).
        """
        return wrapClientTLS(self.clientOptions(host), endpoint)

    def wrapServerFactory(
        self, factory: IProtocolFactory, what: str = "AMP port", clock: IReactorTime | None = None
    ) -> IProtocolFactory:
        """
        C{factory} behind TLS (see L{serverOptions}); failed handshakes are logged.

        @param what: the port's name for the log.
        @param clock: when small writes are sent together (the global reactor by default).
        """
        tls = TLSMemoryBIOFactory(
            self.serverOptions(), False, _WatchingFactory(factory, what), clock=clock
        )
        tls.noisy = False
        return tls


def withTLS(
    tls: MutualTLS | None, host: str, endpoint: IStreamClientEndpoint
) -> IStreamClientEndpoint:
    """
    C{endpoint}, with mutual TLS on top when C{tls} is given: every outbound AMP
    connection (a broker to another, C{qha-admin} to a broker) goes through here.
    """
    if tls is None:
        return endpoint
    return tls.wrapClientEndpoint(host, endpoint)


def parseEndpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    Split a Twisted endpoint string into its kind, its positional arguments and its
    keyword arguments, with Twisted's rules (C{:} between arguments, C{=} after a
    keyword, C{\\} quotes the next character).
    """
    parts: list[list[str]] = [[""]]
    escaped = False
    for char in description:
        if escaped:
            parts[-1][-1] += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append([""])
        elif char == "=" and len(parts[-1]) == 1:
            parts[-1].append("")
        else:
            parts[-1][-1] += char
    kind = parts[0][0]
    positional = [part[0] for part in parts[1:] if len(part) == 1]
    keywords = {part[0]: part[1] for part in parts[1:] if len(part) == 2}
    return kind, positional, keywords


def amqpServerEndpoint(
    reactor: Any,
    description: str,
    clientAuthority: str | None = None,
    requireClientCertificate: bool = False,
) -> IStreamServerEndpoint:
    """
    The AMQP listener of C{--port}: Twisted's C{serverFromString}, or, with
    C{clientAuthority}, an C{ssl:} endpoint that also asks each client for a
    certificate of that CA (what RabbitMQ calls C{verify_peer}).

    @param description: the endpoint string.
    @param clientAuthority: the CA (PEM file) of client certificates.
    @param requireClientCertificate: refuse clients that present none
        (RabbitMQ's C{fail_if_no_peer_cert}).
    @raise ValueError: one line, for a string that is not C{ssl:} with a client CA,
        or files that cannot be read.
    """
    if clientAuthority is None:
        return serverFromString(reactor, description)
    kind, positional, keywords = parseEndpoint(description)
    if kind != "ssl" or len(positional) > 1:
        raise ValueError(
            f"--tls-client-ca needs --port ssl:PORT:privateKey=KEY:certKey=CERT, not {description!r}"
        )
    port = positional[0] if positional else keywords.pop("port", "")
    keywords.pop("port", None)
    known = {"privateKey", "certKey", "interface", "backlog", "extraCertChain"}
    unknown = sorted(set(keywords) - known)
    if unknown:
        raise ValueError(
            f"--port {description!r}: {', '.join(unknown)} cannot be combined with"
            f" --tls-client-ca (known: {', '.join(sorted(known))})"
        )
    if not port.isdigit():
        raise ValueError(f"--port {description!r} names no port number")
    privateKey = keywords.get("privateKey", "server.pem")
    certificate = loadPrivateCertificate(
        keywords.get("certKey", privateKey), privateKey, "--port certKey/privateKey"
    )
    chain = []
    if "extraCertChain" in keywords:
        chain = [c.original for c in loadAuthority(keywords["extraCertChain"], "extraCertChain")]
    options = CertificateOptions(
        privateKey=certificate.privateKey.original,
        certificate=certificate.original,
        extraCertChain=chain or None,
        verify=True,
        caCerts=[c.original for c in loadAuthority(clientAuthority, "--tls-client-ca")],
        requireCertificate=requireClientCertificate,
    )
    return SSL4ServerEndpoint(
        reactor,
        int(port),
        options,
        backlog=int(keywords.get("backlog", "50")),
        interface=keywords.get("interface", ""),
    )


def peerCommonName(transport: object) -> str | None:
    """
    The common name (CN) of the certificate a client presented on a TLS connection,
    checked against the listener's client CA; L{None} on plain TCP, without a
    certificate, or without a CN.
    """
    if not ISSLTransport.providedBy(transport):
        return None
    try:
        certificate: Any = transport.getPeerCertificate()  # type: ignore[attr-defined]
    except Exception:
        return None
    if certificate is None:
        return None
    name = certificate.get_subject().commonName
    return str(name) if name else None


__all__ = [
    "MutualTLS",
    "amqpServerEndpoint",
    "describeFailure",
    "isTLSFailure",
    "loadAuthority",
    "loadPrivateCertificate",
    "parseEndpoint",
    "peerCommonName",
    "withTLS",
]
