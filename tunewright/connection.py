"""Where the three services are: from arguments, else the environment, else a config file,
else the local ``tunewright up`` on its default ports.

    TUNEWRIGHT_DATA=host:port  TUNEWRIGHT_TRAINER=host:port  TUNEWRIGHT_SERVE=host:port
    TUNEWRIGHT_CONFIG=path     (default: ~/.config/tunewright/config.toml)

The config file is TOML::

    [services]
    data = "10.0.0.5:50051"
    trainer = "10.0.0.5:50052"
    serve = "10.0.0.5:50053"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tunewright.stack import DEFAULT_PORTS

SERVICES = ("data", "trainer", "serve")


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

    def address(self, service: str) -> str:
        return getattr(self, service)

    def source(self, service: str) -> str:
        return dict(self.sources).get(service, "default")

    @classmethod
    def resolve(cls, config: Path | None = None, **given: str | None) -> Connection:
        """``given`` holds addresses from arguments (``data=``, ``trainer=``, ``serve=``)."""
        path = Path(config) if config else Path(os.environ.get("TUNEWRIGHT_CONFIG") or default_config_path())
        from_file = _read_config(path, required=config is not None or "TUNEWRIGHT_CONFIG" in os.environ)
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
        return cls(**addresses, sources=tuple(sources))


def _read_config(path: Path, required: bool) -> dict[str, str]:
    if not path.is_file():
        if required:
            raise ConfigError(f"no config file at {path}; create it or unset TUNEWRIGHT_CONFIG")
        return {}
    try:
        services = tomllib.loads(path.read_text()).get("services", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from error
    unknown = set(services) - set(SERVICES)
    if unknown or not all(isinstance(v, str) for v in services.values()):
        raise ConfigError(
            f'{path}: [services] takes data, trainer and serve as "host:port" strings; fix {sorted(unknown) or "the values"}'
        )
    return services
