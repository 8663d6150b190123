"""The ``tunewright`` command: ``up`` starts the three services, ``demo`` runs the whole path."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunewright.stack import DEFAULT_PORTS, Stack


def up(args: argparse.Namespace) -> int:
    ports = {"data": args.data_port, "trainer": args.trainer_port, "serve": args.serve_port}
    stack = Stack(args.state_dir, host=args.host, ports=ports)
    stack.start()
    for service in ("data", "trainer", "serve"):
        print(f"{service:8} {stack.address(service)}  data in {args.state_dir / service}", flush=True)
    print("serving; Ctrl-C or SIGTERM stops all three", flush=True)
    try:
        stack.wait()
    finally:
        stack.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunewright", description="Self-hosted LLM fine-tuning services.")
    commands = parser.add_subparsers(dest="command", required=True)

    up_parser = commands.add_parser("up", help="start the data, trainer and serve services on this machine")
    up_parser.add_argument(
        "--state-dir", type=Path, default=Path(".tunewright"), help="one data directory per service inside"
    )
    up_parser.add_argument("--host", default="127.0.0.1")
    up_parser.add_argument("--data-port", type=int, default=DEFAULT_PORTS["data"])
    up_parser.add_argument("--trainer-port", type=int, default=DEFAULT_PORTS["trainer"])
    up_parser.add_argument("--serve-port", type=int, default=DEFAULT_PORTS["serve"])
    up_parser.set_defaults(run=up)

    demo_parser = commands.add_parser(
        "demo", help="fine-tune the built-in model on the support-ticket example, end to end"
    )
    demo_parser.add_argument("--state-dir", type=Path, default=Path(".tunewright/demo"))
    demo_parser.add_argument(
        "--dataset", type=Path, default=None, help="chat JSONL (default: the support-ticket example)"
    )
    demo_parser.add_argument("--base-model", default="smollm2-135m-instruct")
    demo_parser.add_argument(
        "--method",
        default="lora",
        help="fine-tuning method: lora, qlora, unsloth, prefix, full, or one from an installed plugin",
    )
    demo_parser.add_argument(
        "--learning-rate", type=float, default=0.0, help="peak learning rate (default: the method's own)"
    )
    demo_parser.add_argument("--epochs", type=int, default=2)
    demo_parser.add_argument("--results", type=Path, default=Path("demo-results.json"))

    def demo(args: argparse.Namespace) -> int:
        from tunewright.demo import run_demo

        return run_demo(args)

    demo_parser.set_defaults(run=demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
