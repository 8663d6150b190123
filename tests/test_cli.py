"""The `tunewright` command through the whole path against real services, its --json output,
its one-line errors, and where it finds the services."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess

import pytest

from conftest import CLI, ticket_lines
from tunewright.connection import ConfigError, Connection
from tunewright.stack import free_port


def tunewright(services, *args: str, cwd=None, env=None, addresses: bool = True) -> subprocess.CompletedProcess:
    where = (
        ["--data", services.data_address, "--trainer", services.trainer_address, "--serve", services.serve_address]
        if addresses
        else []
    )
    return subprocess.run(
        [CLI, *where, *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def ok_json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_whole_path_upload_train_watch_plot_export_chat(services, tiny_model, tmp_path):
    data = tmp_path / "tickets.jsonl"
    data.write_text("\n".join(ticket_lines(40)) + "\n")

    dataset = ok_json(tunewright(services, "datasets", "upload", str(data), "--name", "tickets", "--json"))
    assert dataset["name"].startswith("datasets/") and dataset["display_name"] == "tickets"
    assert dataset["example_count"] == 40 and dataset["split_counts"] == {"train": 32, "validation": 4, "test": 4}

    job = ok_json(
        tunewright(
            services,
            "jobs",
            "create",
            "--dataset",
            dataset["name"].split("/")[1],  # an id is enough
            "--base-model",
            str(tiny_model),
            "--param",
            "r=4",
            "--param",
            "target_modules=q_proj,v_proj",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--micro-batch-size",
            "3",
            "--json",
        )
    )
    assert (
        job["name"].startswith("jobs/") and job["state"] in ("queued", "running") and job["dataset"] == dataset["name"]
    )
    assert job["method"] == "lora" and job["method_parameters"]["r"] == 4
    assert job["method_parameters"]["target_modules"] == ["q_proj", "v_proj"]
    assert job["hyperparameters"]["epochs"] == 2 and job["hyperparameters"]["batch_size"] == 8
    assert job["hyperparameters"]["micro_batch_size"] == 3

    watched = tunewright(services, "jobs", "watch", job["name"], "--json")
    assert watched.returncode == 0, watched.stderr
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert [e["state"] for e in events if e["kind"] == "state"] == ["queued", "running", "succeeded"]
    assert [e["progress"]["step"] for e in events if e["kind"] == "progress"] == list(range(1, 9))
    assert [(e["validation"]["step"], e["validation"]["epoch"]) for e in events if e["kind"] == "validation"] == [
        (4, 1.0),
        (8, 2.0),
    ]

    live = tunewright(services, "jobs", "watch", job["name"])  # for people: a bar, the logs, how it ended
    assert live.returncode == 0 and "step 8/8" in live.stdout and f"{job['name']}: succeeded" in live.stdout

    shown = ok_json(tunewright(services, "jobs", "show", job["name"], "--json"))
    assert shown["state"] == "succeeded" and shown["evaluation"]["example_count"] == 4
    table = tunewright(services, "jobs", "show", job["name"])
    assert table.returncode == 0 and "base against fine-tuned" in table.stdout and "first line match" in table.stdout

    plotted = ok_json(
        tunewright(services, "jobs", "plot", job["name"], "--output", str(tmp_path / "loss.png"), "--json")
    )
    assert plotted == {
        "job": job["name"],
        "path": str(tmp_path / "loss.png"),
        "train_points": 8,
        "validation_points": 2,
    }
    import matplotlib.image

    png = tmp_path / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(png).shape == (450, 800, 4)  # 8 x 4.5 inches at 100 dpi, RGBA

    # By default a short job checkpoints at each epoch's end; both kept (the latest two).
    saved = ok_json(tunewright(services, "jobs", "checkpoints", job["name"], "--json"))
    assert [(c["step"], c["epoch"]) for c in saved] == [(4, 1.0), (8, 2.0)]
    assert all(c["validation_loss"] is not None and c["size_bytes"] > 0 for c in saved)
    listed = tunewright(services, "jobs", "checkpoints", job["name"])
    assert listed.returncode == 0 and f"{job['name']}/checkpoints/8" in listed.stdout

    model = ok_json(tunewright(services, "models", "export", job["name"], "--json"))
    assert model["name"].startswith("models/") and model["job"] == job["name"]
    assert model["format"] == "safetensors"  # the tiny test model has no GGUF tokenizer
    assert model["max_kl_divergence"] <= model["kl_tolerance"]

    answer = ok_json(
        tunewright(services, "chat", model["name"], "--prompt", "Our API is down", "--max-new-tokens", "8", "--json")
    )
    assert answer["finish_reason"] in ("stop", "length") and 0 < answer["token_count"] <= 8
    assert answer["backend"] == "transformers" and isinstance(answer["text"], str)

    assert job["name"] in [j["name"] for j in ok_json(tunewright(services, "jobs", "list", "--json"))]
    assert model["name"] in [m["name"] for m in ok_json(tunewright(services, "models", "list", "--json"))]
    assert dataset["name"] in [d["name"] for d in ok_json(tunewright(services, "datasets", "list", "--json"))]
    report = ok_json(tunewright(services, "datasets", "report", dataset["name"], "--json"))
    assert {s: r["examples"] for s, r in report["splits"].items()} == {"train": 32, "validation": 4, "test": 4}
    methods = ok_json(tunewright(services, "methods", "list", "--json"))
    assert {"lora", "qlora", "unsloth", "prefix", "full"} <= {m["name"] for m in methods}


def test_jobs_estimate_takes_the_options_of_jobs_create_and_creates_nothing(services, tiny_model, tmp_path):
    data = tmp_path / "tickets.jsonl"
    data.write_text("\n".join(ticket_lines(40)) + "\n")
    dataset = ok_json(tunewright(services, "datasets", "upload", str(data), "--json"))["name"]
    options = ["--dataset", dataset, "--base-model", str(tiny_model), "--param", "r=4", "--epochs", "3"]
    found = ok_json(tunewright(services, "jobs", "estimate", *options, "--batch-size", "4", "--json"))
    assert found["fits"] and found["steps"] == 3 * 8 and found["largest_pass_rows"] == 4  # 32 training examples
    assert sum(found["breakdown"].values()) == found["peak_memory_bytes"] > 0
    assert found["seconds_per_step"] > 0 and found["total_seconds"] >= found["training_seconds"]
    shown = tunewright(services, "jobs", "estimate", *options)
    assert shown.returncode == 0, shown.stderr
    assert "peak memory about" in shown.stdout and ": fits" in shown.stdout and "activations" in shown.stdout
    assert all(job["dataset"] != dataset for job in ok_json(tunewright(services, "jobs", "list", "--json")))
    # create's own options are not estimate's.
    watch = tunewright(services, "jobs", "estimate", *options, "--watch")
    assert watch.returncode == 2 and "No such option" in watch.stderr


def test_a_bad_file_is_one_readable_line_naming_the_line_and_the_fix(services, tmp_path):
    lines = ticket_lines(10)
    lines[2] = lines[2][:-5]  # line 3: JSON cut off
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    result = tunewright(services, "datasets", "upload", str(bad))
    assert result.returncode == 1 and result.stdout == ""
    message = result.stderr.strip()
    assert message.startswith("error: INVALID_ARGUMENT") and "line 3" in message and len(message.splitlines()) == 1


def test_an_unreachable_service_says_where_it_looked_and_how_to_fix_it(services):
    closed = f"127.0.0.1:{free_port()}"
    result = tunewright(services, "--trainer", closed, "jobs", "list")
    assert result.returncode == 1
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    assert message.startswith(
        f"error: UNAVAILABLE (SERVICE_UNAVAILABLE): cannot reach the trainer service at {closed} ("
    )
    assert message.endswith(
        "check --trainer, or point to it with --trainer or TUNEWRIGHT_TRAINER; "
        "if it serves TLS, trust its CA with --ca or TUNEWRIGHT_CA"
    )


def test_usage_mistakes_exit_2_without_calling_anything(services, tmp_path):
    missing = tunewright(services, "datasets", "upload", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad_param = tunewright(services, "jobs", "create", "--dataset", "d", "--param", "r32")
    assert bad_param.returncode == 2 and "error: --param 'r32' is not NAME=VALUE" in bad_param.stderr


def test_services_are_found_from_the_environment_and_the_config_file(services, tmp_path):
    listed = tunewright(
        services,
        "datasets",
        "list",
        "--json",
        addresses=False,
        env={"TUNEWRIGHT_DATA": services.data_address, "TUNEWRIGHT_CONFIG": str(tmp_path / "none.toml")},
    )
    assert listed.returncode == 2 and "no config file at" in listed.stderr
    config = tmp_path / "config.toml"
    config.write_text(f'[services]\ndata = "{services.data_address}"\n')
    listed = tunewright(services, "datasets", "list", "--json", addresses=False, env={"TUNEWRIGHT_CONFIG": str(config)})
    assert isinstance(ok_json(listed), list)


def test_addresses_come_from_flags_then_environment_then_config_then_defaults(tmp_path, monkeypatch):
    config = tmp_path / "c.toml"
    config.write_text('[services]\ndata = "files:1"\ntrainer = "files:2"\n')
    monkeypatch.setenv("TUNEWRIGHT_CONFIG", str(config))
    monkeypatch.setenv("TUNEWRIGHT_TRAINER", "env:2")
    monkeypatch.delenv("TUNEWRIGHT_DATA", raising=False)
    monkeypatch.delenv("TUNEWRIGHT_SERVE", raising=False)
    found = Connection.resolve(data="flag:1")
    assert (found.data, found.trainer, found.serve) == ("flag:1", "env:2", "127.0.0.1:50053")
    assert (found.source("data"), found.source("trainer"), found.source("serve")) == (
        "--data",
        "TUNEWRIGHT_TRAINER",
        "default",
    )
    assert Connection.resolve().data == "files:1"
    config.write_text("[services]\ndata = 1\n")
    with pytest.raises(ConfigError, match="host:port"):
        Connection.resolve()


class CuttableProxy:
    """Forwards a loopback port to ``target``; ``cut()`` drops every open connection, as a
    restarted trainer or a network blip would."""

    def __init__(self, target: str) -> None:
        import socket
        import threading

        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.open: list[socket.socket] = []
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.open += [downstream, upstream]
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source, sink) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                s.close()

    def cut(self) -> None:
        import socket

        self.cuts += 1
        for s in self.open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.open.clear()

    def close(self) -> None:
        self.listener.close()
        self.cut()


def test_watch_reattaches_after_a_disconnect_and_misses_nothing(services, tiny_model):
    from tunewright.client import Client

    data = services.client.upload_bytes("t.jsonl", ("\n".join(ticket_lines(40)) + "\n").encode())
    dataset = services.client.create_dataset(data.name)
    proxy = CuttableProxy(services.trainer_address)
    try:
        with Client(services.data_address, proxy.address, services.serve_address) as client:
            job = client.create_job(dataset.name, base_model=str(tiny_model), epochs=3, batch_size=8, evaluate=False)
            events = []
            for event in client.watch_job(job.name):
                events.append(event)
                if event.progress and event.progress.step in (2, 7):
                    proxy.cut()
            assert proxy.cuts == 2
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))  # no gap, no repeat
            assert [e.progress.step for e in events if e.progress] == list(range(1, 13))
            assert events[-1].state == "succeeded"
    finally:
        proxy.close()
