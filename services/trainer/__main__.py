"""``python -m tunewright.trainer``: the trainer service as its own process."""

from __future__ import annotations

import argparse
from pathlib import Path

from tunewright.core.logging import configure_logging
from tunewright.core.security import add_server_arguments, server_security
from tunewright.core.server import serve_until_signalled
from tunewright.trainer.app import start_trainer
from tunewright.trainer.memory import parse_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tunewright.trainer", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:50052", help="host:port to serve on")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(".tunewright/trainer"), help="jobs, artifacts, model cache"
    )
    parser.add_argument("--data-service", default="127.0.0.1:50051", help="address of the data service")
    parser.add_argument("--metrics-listen", help="host:port to serve Prometheus /metrics on over HTTP (default: off)")
    parser.add_argument(
        "--max-running-jobs",
        type=int,
        default=1,
        help="jobs that train at once (default 1: on a small CPU machine one job uses every core)",
    )
    parser.add_argument(
        "--models-dir",
        dest="models_dirs",
        type=Path,
        action="append",
        metavar="FOLDER",
        help="a folder whose model folders a job's base_model may name; repeat for several "
        "(default: DATA_DIR/models). Built-in model names are always allowed",
    )
    parser.add_argument(
        "--memory-limit",
        type=parse_size,
        metavar="SIZE",
        help="memory a job may use: CreateJob refuses a job estimated above SIZE (8G, 8GiB, 512M), and a "
        "worker whose resident memory passes it is stopped and its job failed OUT_OF_MEMORY with what to "
        "change, before the kernel's out-of-memory killer picks a process (default: jobs are checked "
        "against the host's free memory when created, and a running worker is not limited)",
    )
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging("trainer")
    server, runner = start_trainer(
        args.listen,
        args.data_dir,
        args.data_service,
        args.metrics_listen,
        server_security(args),
        args.max_running_jobs,
        args.models_dirs,
        args.memory_limit,
    )
    serve_until_signalled(server, on_stop=runner.stop)


if __name__ == "__main__":
    main()
