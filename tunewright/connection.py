"""Where the three services are: from arguments, else the environment, else a config file,
else the local ``tunewright up`` on its default ports.

    TUNEWRIGHT_DATA=host:port  TUNEWRIGHT_TRAINER=host:port  TUNEWRIGHT_SERVE=host:port
    TUNEWRIGHT_CONFIG=path     (default: ~/.config/tunewright/config.toml)

and how to talk to them (a token, TLS), the same way: arguments, then TUNEWRIGHT_TOKEN,
TUNEWRIGHT_TOKEN_FILE, TUNEWRIGHT_CA, TUNEWRIGHT_CLIENT_CERT, TUNEWRIGHT_CLIENT_KEY (see
``tunewright.core.security``), then the config file. The config file is TOML::

    [services]
    data = "10.0.0.5:50051"
    trainer = "10.0.0.5:50052"
    serve = "10.0.0.5:50053"

    [security]                     # all optional
    token_file = "/home/me/.config/tunewright/token"
    ca = "/home/me/.config/tunewright/ca.pem"
    client_cert = "..."            # with client_key, for mutual TLS
    client_key = "..."
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tunewright.core.security import ChannelSecurity
from tunewright.stack import DEFAULT_PORTS

SERVICES = ("data", "trainer", "serve")
SECURITY_KEYS = ("token_file", "ca", "client_cert", "client_key")


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "tunewright" / "config.toml"


class ConfigError(ValueError):
    """The config file cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class Connection:
    data: str
    trainer: str
    serve: str
    # Where each address came from ("--data", "TUNEWRIGHT_DATA", the config file, "default"),
    # so that an error can say which setting to fix.
    sources: tuple[tuple[str, str], ...] = ()
    security: ChannelSecurity = ChannelSecurity()

    def address(self, service: str) -> str:
        return getattr(self, service)

    def source(self, service: str) -> str:
        return dict(self.sources).get(service, "default")

    @classmethod
    def resolve(cls, config: Path | None = None, **given: str | Path | None) -> Connection:
        """``given`` holds addresses from arguments (``data=``, ``trainer=``, ``serve=``) and
        security settings (``token=``, ``token_file=``, ``ca=``, ``client_cert=``, ``client_key=``)."""
        path = Path(config) if config else Path(os.environ.get("TUNEWRIGHT_CONFIG") or default_config_path())
        from_file, file_security = _read_config(path, required=config is not None or "TUNEWRIGHT_CONFIG" in os.environ)
        addresses, sources = {}, []
        for service in SERVICES:
            variable = f"TUNEWRIGHT_{service.upper()}"
            for value, source in (
                (given.get(service), f"--{service}"),
                (os.environ.get(variable), variable),
                (from_file.get(service), f"{path} [services] {service}"),
                (f"127.0.0.1:{DEFAULT_PORTS[service]}", "default"),
            ):
                if value:
                    addresses[service] = value
                    sources.append((service, source))
                    break
        # The config file's [security] as if it were the environment, which overrides it.
        env = {f"TUNEWRIGHT_{k.upper()}": str(v) for k, v in file_security.items()} | dict(os.environ)
        security_given = {k: v for k, v in given.items() if k not in SERVICES}
        return cls(**addresses, sources=tuple(sources), security=ChannelSecurity.from_env(env, **security_given))


def _read_config(path: Path, required: bool) -> tuple[dict[str, str], dict[str, str]]:
    if not path.is_file():
        if required:
            raise ConfigError(f"no config file at {path}; create it or unset TUNEWRIGHT_CONFIG")
        return {}, {}
    try:
        document = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from error
    tables = []
    for table, keys, what in (("services", SERVICES, '"host:port" strings'), ("security", SECURITY_KEYS, "paths")):
        values = document.get(table, {})
        unknown = set(values) - set(keys)
        if unknown or not all(isinstance(v, str) for v in values.values()):
            raise ConfigError(
                f"{path}: [{table}] takes {', '.join(keys)} as {what}; fix {sorted(unknown) or 'the values'}"
            )
        tables.append(values)
    return tables[0], tables[1]
