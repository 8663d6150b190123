"""`tunewright demo` end to end on the tiny model (the real run is `make demo`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import CLI, ticket_lines


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_demo_runs_the_whole_path_and_writes_its_results(method, tiny_model, tmp_path):
    data = tmp_path / "tickets.jsonl"
    data.write_text("\n".join(ticket_lines(40)) + "\n")
    results = tmp_path / "results.json"
    command = [
        CLI,
        "demo",
        "--base-model",
        str(tiny_model),
        "--dataset",
        str(data),
        "--epochs",
        "1",
        "--state-dir",
        str(tmp_path / "state"),
        "--results",
        str(results),
        "--method",
        method,
    ]
    # With --json (prefix): the results alone on stdout, the commentary on stderr.
    as_json = method == "prefix"
    run = subprocess.run(command + ["--json"] * as_json, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stderr if as_json else run.stdout
    if as_json:
        assert json.loads(run.stdout) == json.loads(results.read_text())
    for expected in (
        "queued",
        "running",
        "succeeded",
        "urgency accuracy",
        "gain in urgency accuracy",
        "step 4/4",
        "services stopped",
        str(results.resolve()),
    ):
        assert expected in out, expected
    written = json.loads(results.read_text())
    assert written["test_examples"] == 4 and written["train_steps"] == 4
    assert set(written["urgency_accuracy"]) == {"base", "tuned"}
    assert written["model"].startswith("models/")
    assert Path(written["model_directory"], "Modelfile").is_file() == (method != "prefix")
    assert written["answer_finish_reason"] in ("stop", "length")
    assert written["method"] == method
    # The tiny model's trained tokenizer is one llama.cpp's converter does not know: no GGUF.
    assert written["export_format"] == ("attached" if method == "prefix" else "safetensors")
    assert written["train_tokens_per_second_median"] > 0 and written["peak_training_memory_bytes"] > 2**20


def test_demo_refuses_an_unknown_method_in_one_line(tiny_model, tmp_path):
    data = tmp_path / "tickets.jsonl"
    data.write_text("\n".join(ticket_lines(12)) + "\n")
    run = subprocess.run(
        [CLI, "demo", "--base-model", str(tiny_model), "--dataset", str(data), "--state-dir", str(tmp_path / "s")]
        + ["--method", "dreambooth"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2
    assert "error: INVALID_ARGUMENT: unknown method 'dreambooth'; installed methods: full, lora" in run.stderr
