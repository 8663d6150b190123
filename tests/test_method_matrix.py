"""Every fine-tuning method through the same checks, on the tiny Llama and the real services.

One row per method. A new method gets the whole matrix by adding its row to ``CASES``
(``test_every_installed_method_has_a_row`` fails until it does). For each method:

- a job through the real services succeeds, evaluating base and tuned;
- the training loss falls on a small set the model can memorize;
- what was saved loads back (for serving, and trainable for resuming) and computes what
  the trained model computed on the artifact's probe;
- merge or refusal, as the method declares: merged logits equal the trained ones within
  the probe's tolerance, or an export that needs merging is refused FAILED_PRECONDITION
  before any work and the attached export serves instead;
- the serve service answers with the result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from conftest import REPO, Services, rich_error, ticket_lines
from tunewright.plugin_manager import load_methods
from tunewright.serve.v1 import serve_service_pb2 as serve_pb
from tunewright.trainer.v1 import trainer_service_pb2 as pb


@dataclass(frozen=True)
class Case:
    method: str
    # The tiny random model learns at rates far above what real models want.
    learning_rate: float
    # Each method's loss must fall at least this much (first step to last epoch). Methods
    # that change the weights memorize the tiny set almost entirely; a prefix or IA3's
    # scales move a random model less.
    min_drop: float = 0.5


CASES = [
    Case("lora", learning_rate=1e-2),
    Case("qlora", learning_rate=5e-3),
    Case("unsloth", learning_rate=1e-2),
    Case("prefix", learning_rate=1e-1, min_drop=0.2),
    Case("full", learning_rate=3e-3),
    # The example package in examples/plugin-ia3, installed from outside like a team's own.
    Case("ia3", learning_rate=2e-1, min_drop=0.2),
]
EPOCHS = 30


@pytest.fixture(scope="module")
def matrix_services(tmp_path_factory, ia3_site):
    """The services, with the IA3 example package importable by them and their workers."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ia3_site))
        patch.setenv("PYTHONPATH", str(ia3_site))
        running = Services(tmp_path_factory.mktemp("matrix"))
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture(scope="module")
def memorize_dataset(matrix_services, tmp_path_factory):
    path = tmp_path_factory.mktemp("memorize") / "d.jsonl"
    path.write_text("\n".join(ticket_lines(20)) + "\n")
    client = matrix_services.client
    return client.create_dataset(client.upload(path).name).name


def download_artifact(client, job: str, into: Path) -> Path:
    handle = None
    for message in client.trainer.ReadArtifact(pb.ReadArtifactRequest(name=job), timeout=300):
        if message.WhichOneof("content") == "file":
            if handle:
                handle.close()
            target = into / message.file.path
            target.parent.mkdir(parents=True, exist_ok=True)
            handle = open(target, "wb")  # noqa: SIM115 - closed when the next file starts or below
        else:
            handle.write(message.chunk)
    if handle:
        handle.close()
    return into


def test_every_installed_method_has_a_row(matrix_services):
    assert set(load_methods()) == {case.method for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=[case.method for case in CASES])
def test_method(case, matrix_services, memorize_dataset, tiny_model, tmp_path):
    client = matrix_services.client
    method = next(m for m in client.trainer.ListMethods(pb.ListMethodsRequest()).methods if m.name == case.method)

    # A job through the real services succeeds, with base-against-tuned evaluation.
    job = client.trainer.CreateJob(
        pb.CreateJobRequest(
            base_model=str(tiny_model),
            dataset=memorize_dataset,
            method=case.method,
            hyperparameters=pb.Hyperparameters(
                epochs=EPOCHS, batch_size=8, learning_rate=case.learning_rate, eval_max_new_tokens=4
            ),
        )
    ).job
    events = list(client.trainer.WatchJob(pb.WatchJobRequest(name=job.name), timeout=600))
    job = client.trainer.GetJob(pb.GetJobRequest(name=job.name)).job
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    assert job.evaluation.example_count == 2 and job.evaluation.tuned.loss > 0
    if load_methods()[case.method].capabilities.import_first:
        # Its worker is a new interpreter, not one forked after transformers and peft were
        # imported: Unsloth warns when it comes after them, and leaves them unpatched.
        log = (matrix_services.root / "trainer" / "jobs" / job.name.split("/")[1] / "worker.log").read_text()
        assert "should be imported before" not in log

    # The loss falls on a set small enough to memorize (16 examples, 30 epochs).
    steps = [e.progress for e in events if e.WhichOneof("payload") == "progress"]
    per_epoch = len(steps) // EPOCHS
    last_epoch = sum(s.loss for s in steps[-per_epoch:]) / per_epoch
    assert last_epoch < (1 - case.min_drop) * steps[0].loss, [round(s.loss, 3) for s in steps]

    # What was saved loads back and computes what the trained model computed; merging
    # (where declared) does too. The rebuild runs in its own process: see tests/rebuild.py.
    artifact = download_artifact(client, job.name, tmp_path / "artifact")
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["artifact_kind"] == pb.ArtifactKind.Name(method.capabilities.artifact_kind).split("_")[-1].lower()
    rebuild = subprocess.run(
        [sys.executable, str(REPO / "tests" / "rebuild.py"), str(artifact), str(tiny_model)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rebuild.returncode == 0, rebuild.stderr[-3000:]
    rebuilt = json.loads(rebuild.stdout.strip().splitlines()[-1])
    tolerance = rebuilt["tolerance"]
    assert rebuilt["reloaded"] <= tolerance and rebuilt["resumable"] <= tolerance, rebuilt
    assert rebuilt["trainable_parameters"] > 0
    if method.capabilities.mergeable:
        assert rebuilt["merged"] <= tolerance, rebuilt
    else:
        assert rebuilt["merged"] is None

    # Export: merged where the method can be exported (a safetensors folder: llama.cpp's
    # converter does not know the tiny model's tokenizer), else refused up front and attached.
    serve = client.serve
    if method.capabilities.exportable:
        model = serve.ExportModel(serve_pb.ExportModelRequest(job=job.name), timeout=600).model
        assert model.format == "safetensors" and "Modelfile" in {f.path for f in model.files}
    else:
        before = len(serve.ListModels(serve_pb.ListModelsRequest(page_size=1000)).models)
        with pytest.raises(grpc.RpcError) as refused:
            serve.ExportModel(serve_pb.ExportModelRequest(job=job.name, format="gguf"), timeout=600)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        reason, violations = rich_error(refused.value)
        assert reason == "NOT_EXPORTABLE" and violations[0][0] == "format"
        assert method.capabilities.not_exportable_reason in refused.value.details()
        assert len(serve.ListModels(serve_pb.ListModelsRequest(page_size=1000)).models) == before
        model = serve.ExportModel(serve_pb.ExportModelRequest(job=job.name), timeout=600).model
        assert model.format == "attached" and not model.modelfile
    assert model.method == case.method
    assert model.verification.max_kl_divergence <= model.verification.tolerance == tolerance

    # The serve service answers with it.
    answer = client.ask(model.name, [{"role": "user", "content": "Our API is down"}], max_new_tokens=6)
    assert answer.finish_reason in ("stop", "length") and answer.token_count <= 6


def test_no_server_process_imported_unsloth(matrix_services):
    """Unsloth patches transformers when imported: only job workers may import it. The
    trainer and serve servers of this module run in this process."""
    assert "unsloth" not in sys.modules and "unsloth_zoo" not in sys.modules
