"""Bearer tokens and TLS, for the services and for everything that calls them.

Server side (``ServerSecurity``): which tokens are accepted and what each may do, and the
certificate the service presents (with a client CA, mutual TLS). The one server interceptor
asks ``authorize`` about every call: no or an unknown token is UNAUTHENTICATED, a token
without the right the RPC needs is PERMISSION_DENIED. Tokens are kept as SHA-256 digests
and compared in constant time; a token itself is never logged, only its name.

Calling side (``ChannelSecurity``): the token sent as ``authorization: Bearer …`` on every
call and the certificates to trust and present, from arguments or the environment:

    TUNEWRIGHT_TOKEN / TUNEWRIGHT_TOKEN_FILE   the bearer token, or a file holding it
    TUNEWRIGHT_CA                              PEM roots to trust; turns TLS on
    TUNEWRIGHT_CLIENT_CERT, TUNEWRIGHT_CLIENT_KEY   a client certificate, for mutual TLS

The services read the same variables for the calls they make to each other (the trainer
and its workers to the data service, the serve service to the trainer), so one set of
settings makes the whole stack authenticate.

The tokens file is TOML, one table per token::

    [[token]]
    name = "ci"                       # what the logs say instead of the token
    sha256 = "9f86d0…"                # hex SHA-256 of the token: `tunewright` never stores it
    rights = ["read", "write", "chat"]
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

# What an RPC needs, from its name: reading (Get, List, Watch, Read), answering (Chat,
# Generate) or changing something (everything else, so a new RPC is guarded by default).
READ, WRITE, CHAT = "read", "write", "chat"
RIGHTS = (READ, WRITE, CHAT)
_READ_PREFIXES = ("Get", "List", "Watch", "Read")
# Health checks and reflection: open unless the operator says otherwise.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def required_right(method: str) -> str:
    name = method.rsplit("/", 1)[-1]
    if name.startswith(_READ_PREFIXES):
        return READ
    if name in ("Chat", "Generate"):
        return CHAT
    return WRITE


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SecurityConfigError(ValueError):
    """A tokens file or certificate that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class Credential:
    name: str
    sha256: str
    rights: frozenset[str]


def load_tokens(path: Path) -> tuple[Credential, ...]:
    try:
        entries = tomllib.loads(Path(path).read_text()).get("token", [])
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise SecurityConfigError(f"cannot read the tokens file {path}: {error}") from error
    credentials = []
    for i, entry in enumerate(entries):
        where = f"{path}: [[token]] #{i + 1}"
        name, sha, rights = entry.get("name"), entry.get("sha256", ""), entry.get("rights", [])
        if not name or len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha):
            raise SecurityConfigError(f"{where} needs a name and sha256, the hex SHA-256 of the token")
        unknown = set(rights) - set(RIGHTS)
        if unknown or not rights:
            raise SecurityConfigError(f"{where}: rights must be some of {', '.join(RIGHTS)}, not {sorted(unknown)}")
        credentials.append(Credential(name, sha, frozenset(rights)))
    if not credentials:
        raise SecurityConfigError(f"{path} has no [[token]] tables; add one, or start without --tokens")
    return tuple(credentials)


@dataclass(frozen=True)
class ServerSecurity:
    """Empty, it changes nothing: no token is asked for, and the port is plain text."""

    tokens: tuple[Credential, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # PEM roots that client certificates must chain to: mutual TLS.
    client_ca: Path | None = None
    # Health checks and reflection need a token too.
    protect_health: bool = False

    @classmethod
    def from_options(
        cls,
        tokens: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        client_ca: Path | None = None,
        protect_health: bool = False,
    ) -> ServerSecurity:
        if bool(tls_cert) != bool(tls_key):
            raise SecurityConfigError("--tls-cert and --tls-key go together: give both, or neither")
        if client_ca and not tls_cert:
            raise SecurityConfigError("--client-ca (mutual TLS) needs --tls-cert and --tls-key")
        return cls(load_tokens(tokens) if tokens else (), tls_cert, tls_key, client_ca, protect_health)

    def authorize(self, method: str, metadata: Mapping[str, str]) -> tuple[grpc.StatusCode, str] | None:
        """None when the call may go on; else the status and a message that says how to fix it."""
        if not self.tokens or (not self.protect_health and method.startswith(OPEN_SERVICES)):
            return None
        scheme, _, token = metadata.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return (
                grpc.StatusCode.UNAUTHENTICATED,
                "this service needs a token: send `authorization: Bearer <token>` "
                "(TUNEWRIGHT_TOKEN or TUNEWRIGHT_TOKEN_FILE, or --token-file for the tunewright command)",
            )
        given = digest(token.strip())
        credential = next((c for c in self.tokens if hmac.compare_digest(c.sha256, given)), None)
        if credential is None:
            return grpc.StatusCode.UNAUTHENTICATED, "the token is not one this service accepts; check it"
        right = required_right(method)
        if right not in credential.rights:
            return (
                grpc.StatusCode.PERMISSION_DENIED,
                f"token {credential.name!r} may {', '.join(sorted(credential.rights))} but {method} needs "
                f"{right!r}; use a token with that right",
            )
        return None

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if not self.tls_cert:
            return None
        client_ca = Path(self.client_ca).read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(Path(self.tls_key).read_bytes(), Path(self.tls_cert).read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )


@dataclass(frozen=True)
class ChannelSecurity:
    token: str | None = field(default=None, repr=False)
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **given: str | Path | None) -> ChannelSecurity:
        """Arguments first (``token``, ``token_file``, ``ca``, ``client_cert``, ``client_key``),
        then the TUNEWRIGHT_* variables."""
        env = os.environ if env is None else env

        def pick(name: str) -> str | None:
            value = given.get(name)
            return str(value) if value else env.get(f"TUNEWRIGHT_{name.upper()}") or None

        token = pick("token")
        token_file = pick("token_file")
        if not token and token_file:
            try:
                token = Path(token_file).read_text().strip()
            except OSError as error:
                raise SecurityConfigError(f"cannot read the token file {token_file}: {error.strerror}") from error
        paths = {name: Path(v) if (v := pick(name)) else None for name in ("ca", "client_cert", "client_key")}
        if bool(paths["client_cert"]) != bool(paths["client_key"]):
            raise SecurityConfigError("a client certificate needs its key: set both TUNEWRIGHT_CLIENT_CERT and _KEY")
        return cls(token, **paths)

    @property
    def tls(self) -> bool:
        return self.ca is not None

    def environment(self) -> dict[str, str]:
        """The variables that carry these settings to a child process."""
        values = {
            "TUNEWRIGHT_TOKEN": self.token,
            "TUNEWRIGHT_CA": self.ca,
            "TUNEWRIGHT_CLIENT_CERT": self.client_cert,
            "TUNEWRIGHT_CLIENT_KEY": self.client_key,
        }
        return {k: str(v) for k, v in values.items() if v}


def open_channel(address: str, security: ChannelSecurity | None = None, options=None) -> grpc.Channel:
    """A channel to ``address`` with TLS when ``security`` trusts a CA, and the bearer token
    on every call when it has one."""
    security = security or ChannelSecurity()
    if security.tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(security.ca).read_bytes(),
            private_key=Path(security.client_key).read_bytes() if security.client_key else None,
            certificate_chain=Path(security.client_cert).read_bytes() if security.client_cert else None,
        )
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    if security.token:
        channel = grpc.intercept_channel(channel, _BearerToken(security.token))
    return channel


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        metadata = [*(details.metadata or ()), self._header]
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready, details.compression
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: list
    credentials: object
    wait_for_ready: bool | None
    compression: object


@dataclass(frozen=True)
class LocalSecrets:
    """What ``tunewright up --secure`` generates for one machine: a token with every right,
    a CA, a certificate for the services (localhost and 127.0.0.1) and one for clients."""

    directory: Path

    @property
    def token_file(self) -> Path:
        return self.directory / "token"

    @property
    def tokens_file(self) -> Path:
        return self.directory / "tokens.toml"

    def path(self, name: str) -> Path:
        return self.directory / name

    def channel_security(self, mutual: bool = False) -> ChannelSecurity:
        return ChannelSecurity(
            self.token_file.read_text().strip(),
            self.path("ca.pem"),
            self.path("client.pem") if mutual else None,
            self.path("client.key") if mutual else None,
        )

    def server_security(self, mutual: bool = False) -> ServerSecurity:
        return ServerSecurity.from_options(
            self.tokens_file,
            self.path("server.pem"),
            self.path("server.key"),
            self.path("ca.pem") if mutual else None,
        )


def generate_local_secrets(directory: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> LocalSecrets:
    """Creates the files of ``LocalSecrets`` once; later calls keep what is there."""
    secrets_ = LocalSecrets(Path(directory))
    if secrets_.tokens_file.is_file() and secrets_.path("server.pem").is_file():
        return secrets_
    secrets_.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    _write_private(secrets_.token_file, token + "\n")
    secrets_.tokens_file.write_text(
        f'[[token]]\nname = "local"\nsha256 = "{digest(token)}"\nrights = ["read", "write", "chat"]\n'
    )
    for name, content in _certificates(hosts).items():
        (_write_private if name.endswith(".key") else Path.write_text)(secrets_.path(name), content)
    return secrets_


def _write_private(path: Path, content: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(content)


def _certificates(hosts: tuple[str, ...]) -> dict[str, str]:
    """A CA and two certificates it signed, as PEM: for the services and for a client."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def pem_key(key) -> str:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    def build(subject: str, key, issuer_name: x509.Name, issuer_key, extensions) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build(
        "tunewright local CA",
        ca_key,
        name("tunewright local CA"),
        ca_key,
        [(x509.BasicConstraints(ca=True, path_length=0), True)],
    )
    alt_names = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    leaf = [(x509.BasicConstraints(ca=False, path_length=None), True)]
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = build(
        "tunewright services",
        server_key,
        ca.subject,
        ca_key,
        [
            *leaf,
            (x509.SubjectAlternativeName(alt_names), False),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )
    client = build(
        "tunewright client",
        client_key,
        ca.subject,
        ca_key,
        [*leaf, (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)],
    )
    pem = serialization.Encoding.PEM
    return {
        "ca.pem": ca.public_bytes(pem).decode(),
        "server.pem": server.public_bytes(pem).decode(),
        "server.key": pem_key(server_key),
        "client.pem": client.public_bytes(pem).decode(),
        "client.key": pem_key(client_key),
    }


def add_server_arguments(parser) -> None:
    """The security options every service's ``python -m`` entry point takes."""
    group = parser.add_argument_group("security (default: no token, plain text)")
    group.add_argument("--tokens", type=Path, help="TOML file of accepted tokens (see tunewright.core.security)")
    group.add_argument("--tls-cert", type=Path, help="PEM certificate (chain) to serve TLS with")
    group.add_argument("--tls-key", type=Path, help="its PEM private key")
    group.add_argument("--client-ca", type=Path, help="PEM roots client certificates must chain to (mutual TLS)")
    group.add_argument("--protect-health", action="store_true", help="health and reflection need a token too")


def server_security(args) -> ServerSecurity:
    return ServerSecurity.from_options(args.tokens, args.tls_cert, args.tls_key, args.client_ca, args.protect_health)
