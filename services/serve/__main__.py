"""``python -m tunewright.serve``: the serve service as its own process."""

from __future__ import annotations

import argparse
from pathlib import Path

from tunewright.core.logging import configure_logging
from tunewright.core.security import add_server_arguments, server_security
from tunewright.core.server import serve_until_signalled
from tunewright.serve.app import start_serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tunewright.serve", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:50053", help="host:port to serve on")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(".tunewright/serve"), help="exported models, base model cache"
    )
    parser.add_argument("--trainer-service", default="127.0.0.1:50052", help="address of the trainer service")
    parser.add_argument("--metrics-listen", help="host:port to serve Prometheus /metrics on over HTTP (default: off)")
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging("serve")
    serve_until_signalled(
        start_serve(args.listen, args.data_dir, args.trainer_service, args.metrics_listen, server_security(args))
    )


if __name__ == "__main__":
    main()
