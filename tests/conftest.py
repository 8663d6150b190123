"""Shared fixtures: a tiny random Llama with a trained tokenizer, and the three services
on loopback ports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

# Session fixtures other test modules share.
from families import family_model  # noqa: F401
from grpc_status import rpc_status

REPO = Path(__file__).resolve().parent.parent
TICKETS = REPO / "examples" / "support_tickets" / "tickets.jsonl"
# The `tunewright` command installed next to this interpreter.
CLI = str(Path(sys.executable).with_name("tunewright"))

CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_model(folder: Path) -> Path:
    """A 2-layer random Llama and a byte-level BPE tokenizer trained here, saved as a
    Hugging Face folder (safetensors), with a ChatML template like SmolLM2's."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = [line for line in TICKETS.read_text().splitlines()[:200]]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        # 64 and 128: bitsandbytes's 4-bit layers on the CPU need input sizes in blocks of 64.
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        # Ten times transformers' default: with tied embeddings of std 0.02 the final norm
        # caps every logit near 0.2, so no adapter could make the model confident and the
        # method matrix could not see its loss fall.
        initializer_range=0.2,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from tunewright.core.basemodel import load_tokenizer

    return load_tokenizer(tiny_model)


def ticket_lines(count: int) -> list[str]:
    return TICKETS.read_text().splitlines()[:count]


@pytest.fixture
def small_jsonl(tmp_path) -> Path:
    path = tmp_path / "small.jsonl"
    path.write_text("\n".join(ticket_lines(40)) + "\n")
    return path


class Services:
    """The three services in this process, each on its own loopback port and data directory.
    The trainer takes base models from ``models_dirs``: by default the folder above ``root``,
    pytest's temporary root (where ``tiny_model`` and the converted models are)."""

    def __init__(
        self,
        root: Path,
        models_dirs: list[Path] | None = None,
        max_running_jobs: int = 1,
        memory_limit_bytes: int | None = None,
    ) -> None:
        from tunewright.client import Client
        from tunewright.data.app import start_data
        from tunewright.serve.app import start_serve
        from tunewright.trainer.app import start_trainer

        self.root = root
        metrics = "127.0.0.1:0"  # each service's /metrics on a free port: server.metrics_port
        self.data = start_data("127.0.0.1:0", root / "data", metrics)
        self.data_address = f"127.0.0.1:{self.data.port}"
        self.trainer, self.runner = start_trainer(
            "127.0.0.1:0",
            root / "trainer",
            self.data_address,
            metrics,
            models_dirs=models_dirs or [root.parent],
            max_running_jobs=max_running_jobs,
            memory_limit_bytes=memory_limit_bytes,
        )
        self.trainer_address = f"127.0.0.1:{self.trainer.port}"
        self.serve = start_serve("127.0.0.1:0", root / "serve", self.trainer_address, metrics)
        self.serve_address = f"127.0.0.1:{self.serve.port}"
        self.client = Client(self.data_address, self.trainer_address, self.serve_address)

    def stop(self) -> None:
        self.client.close()
        self.runner.stop()
        for server in (self.serve, self.trainer, self.data):
            server.stop(grace=1)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    running = Services(tmp_path_factory.mktemp("services"))
    try:
        yield running
    finally:
        running.stop()


def rich_error(error: grpc.RpcError) -> tuple[str, list[tuple[str, str]]]:
    """(ErrorInfo.reason, [(field, description)]) unpacked from a rich gRPC status."""
    from tunewright.client import unpack_status

    assert rpc_status.from_call(error) is not None, f"no rich status on {error.code()}: {error.details()}"
    return unpack_status(error)


def create_job(client, base_model, dataset: str, method: str = "lora", **hyperparameters) -> str:
    """Creates a job and returns its name."""
    from tunewright.trainer.v1 import trainer_service_pb2 as pb

    return client.trainer.CreateJob(
        pb.CreateJobRequest(
            base_model=str(base_model),
            dataset=dataset,
            method=method,
            hyperparameters=pb.Hyperparameters(**hyperparameters),
        )
    ).job.name


def finished_job(client, name: str):
    """Follows WatchJob until the job ends, and returns the finished job."""
    from tunewright.trainer.v1 import trainer_service_pb2 as pb

    list(client.trainer.WatchJob(pb.WatchJobRequest(name=name), timeout=900))
    return client.trainer.GetJob(pb.GetJobRequest(name=name)).job


def run_job(client, base_model, dataset: str, method: str = "lora", **hyperparameters):
    """Creates a job, follows WatchJob until it ends, and returns the finished job."""
    return finished_job(client, create_job(client, base_model, dataset, method, **hyperparameters))


@pytest.fixture
def double():
    """An HTTP server speaking Ollama's documented protocol (tests/ollama_double.py)."""
    from ollama_double import serve

    with serve() as running:
        yield running


@pytest.fixture(scope="session")
def ia3_site(tmp_path_factory) -> Path:
    """The example IA3 plugin package, installed from outside into its own folder, as a
    team would install its own method; put the folder on sys.path or PYTHONPATH to use it."""
    target = tmp_path_factory.mktemp("ia3-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO / "examples" / "plugin-ia3"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert list(target.glob("tunewright_ia3-*.dist-info/entry_points.txt"))
    return target


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run wherever CUDA is present, and say why they do not elsewhere."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker gpu); this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _shared_model_cache(tmp_path_factory):
    # Every service the tests start (here or as subprocesses) converts the built-in model
    # (or its tokenizer, which the data service counts tokens with) once, into one cache.
    os.environ.setdefault("TUNEWRIGHT_MODEL_CACHE", str(tmp_path_factory.mktemp("model-cache")))


@pytest.fixture(autouse=True, scope="session")
def _quiet_threads():
    # Two cores: keep torch in the test process from fighting the worker subprocesses.
    os.environ.setdefault("TUNEWRIGHT_TORCH_THREADS", "2")
    import torch

    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def go_render(tmp_path_factory):
    """Renders a chat as Ollama does, with Go's text/template: (template, messages, system) -> text."""
    go = shutil.which("go")
    if go is None:
        pytest.fail(
            "Go is not installed; these tests render Ollama templates with Go's text/template: apt-get install golang-go"
        )
    binary = tmp_path_factory.mktemp("go") / "render"
    # GOPROXY=off: the renderer uses only the standard library, nothing is fetched.
    env = {**os.environ, "GOPROXY": "off"}
    subprocess.run([go, "build", "-o", str(binary), "./render"], cwd=Path(__file__).parent / "go", env=env, check=True)

    def run(template: str, messages: list[dict[str, str]], system: str | None) -> str:
        request = json.dumps({"template": template, "messages": messages, "system": system or ""})
        done = subprocess.run([binary], input=request.encode(), capture_output=True, check=False)
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    return run
