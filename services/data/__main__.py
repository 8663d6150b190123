"""``python -m tunewright.data``: the data service as its own process."""

from __future__ import annotations

import argparse
from pathlib import Path

from tunewright.core.logging import configure_logging
from tunewright.core.security import add_server_arguments, server_security
from tunewright.core.server import serve_until_signalled
from tunewright.data.app import start_data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tunewright.data", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:50051", help="host:port to serve on")
    parser.add_argument("--data-dir", type=Path, default=Path(".tunewright/data"), help="where files and datasets live")
    parser.add_argument("--metrics-listen", help="host:port to serve Prometheus /metrics on over HTTP (default: off)")
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging("data")
    serve_until_signalled(start_data(args.listen, args.data_dir, args.metrics_listen, server_security(args)))


if __name__ == "__main__":
    main()
