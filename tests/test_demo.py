"""`tunewright demo` end to end on the tiny model (the real run is `make demo`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import CLI, ticket_lines


def test_demo_runs_the_whole_path_and_writes_its_results(tiny_model, tmp_path):
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
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
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
    assert written["model"].startswith("models/") and Path(written["model_directory"], "Modelfile").is_file()
    assert written["answer_finish_reason"] in ("FINISH_REASON_STOP", "FINISH_REASON_LENGTH")
