"""Bearer tokens and TLS: `tunewright up --secure` as a user runs it (the Node.js example and
the services calling each other with a token over TLS), the rights a token carries, mutual
TLS, open health checks, and no token in any log line."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import CLI, REPO, ticket_lines
from tunewright.client import Client, ServiceError
from tunewright.connection import Connection
from tunewright.core.security import (
    ChannelSecurity,
    ServerSecurity,
    digest,
    generate_local_secrets,
    open_channel,
)
from tunewright.stack import Stack, free_port

SERVICES = ("data", "trainer", "serve")


@pytest.fixture(scope="module")
def secure_up(tmp_path_factory):
    state = tmp_path_factory.mktemp("secure")
    ports = {name: free_port() for name in SERVICES}
    command = [CLI, "up", "--secure", "--no-metrics", "--state-dir", str(state)]
    command += ["--models-dir", str(tmp_path_factory.getbasetemp())]  # where the tiny model is built
    for name in SERVICES:
        command += [f"--{name}-port", str(ports[name])]
    secrets = generate_local_secrets(state / "secrets")  # made first: `up --secure` keeps what is there
    log = open(state / "up.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    stack = Stack(state, ports=ports, secrets=secrets)
    stack.processes = {name: process for name in SERVICES}
    try:
        for name in SERVICES:
            stack.wait_serving(name, timeout=120)
        yield stack, secrets, state
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        log.close()


def node_client(stack, tiny_model, **extra: str) -> subprocess.CompletedProcess:
    node = shutil.which("node")
    assert node, "Node.js is needed for this test (the README lists it)"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TUNEWRIGHT_")},
        "TUNEWRIGHT_DATA_ADDR": stack.address("data"),
        "TUNEWRIGHT_TRAINER_ADDR": stack.address("trainer"),
        "TUNEWRIGHT_SERVE_ADDR": stack.address("serve"),
        "TUNEWRIGHT_BASE_MODEL": str(tiny_model),
        "TUNEWRIGHT_MAX_STEPS": "2",
        **extra,
    }
    return subprocess.run(
        [node, "client.js"], cwd=REPO / "examples" / "node", env=env, capture_output=True, text=True, timeout=600
    )


def test_node_example_runs_the_whole_flow_with_a_token_over_tls(secure_up, tiny_model):
    stack, secrets, _ = secure_up
    ca = str(secrets.path("ca.pem"))
    result = node_client(stack, tiny_model, TUNEWRIGHT_TOKEN_FILE=str(secrets.token_file), TUNEWRIGHT_CA=ca)
    # The job's worker read its dataset, and the serve service pulled the artifact from the
    # trainer: both calls between services carried the token over TLS.
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "node client flow: OK"

    refused = node_client(stack, tiny_model, TUNEWRIGHT_CA=ca)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    wrong = node_client(stack, tiny_model, TUNEWRIGHT_TOKEN="not-the-token", TUNEWRIGHT_CA=ca)
    assert wrong.returncode == 1 and "UNAUTHENTICATED" in wrong.stderr
    plain = node_client(stack, tiny_model, TUNEWRIGHT_TOKEN_FILE=str(secrets.token_file))
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr  # no TLS: no connection


def test_the_cli_and_the_python_client_connect_with_the_printed_settings(secure_up):
    stack, secrets, _ = secure_up
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TUNEWRIGHT_")},
        "TUNEWRIGHT_TOKEN_FILE": str(secrets.token_file),
        "TUNEWRIGHT_CA": str(secrets.path("ca.pem")),
    }
    where = [f"--{s}={stack.address(s)}" for s in SERVICES]
    listed = subprocess.run([CLI, *where, "jobs", "list", "--json"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    without = subprocess.run(
        [CLI, *where, "--ca", str(secrets.path("ca.pem")), "jobs", "list"],
        env={k: v for k, v in env.items() if k != "TUNEWRIGHT_TOKEN_FILE"},
        capture_output=True,
        text=True,
    )
    assert without.returncode == 1 and without.stderr.startswith("error: UNAUTHENTICATED")

    addresses = {s: stack.address(s) for s in SERVICES}
    connection = Connection.resolve(token_file=secrets.token_file, ca=secrets.path("ca.pem"), **addresses)
    with Client(connection=connection) as client:
        assert {m.name for m in client.list_methods()} >= {"lora", "full"}


def test_health_stays_open_and_answers_over_tls(secure_up):
    stack, secrets, _ = secure_up
    with open_channel(stack.address("trainer"), ChannelSecurity(ca=secrets.path("ca.pem"))) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_no_log_line_holds_the_token(secure_up, tiny_model):
    stack, secrets, state = secure_up
    token = secrets.token_file.read_text().strip()
    logs = [state / "up.log", *(state / "trainer" / "jobs").glob("*/worker.log")]
    assert len(logs) >= 2, "the Node.js flow ran a job, whose worker wrote a log"
    for path in logs:
        text = path.read_text(errors="replace")
        assert text and token not in text, path
        assert digest(token) not in text, path


@pytest.fixture
def two_tokens(tmp_path):
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f'[[token]]\nname = "reader"\nsha256 = "{digest("read-only")}"\nrights = ["read"]\n'
        f'[[token]]\nname = "trainer-bot"\nsha256 = "{digest("writer")}"\nrights = ["read", "write"]\n'
    )
    return tokens


def test_a_token_without_the_right_is_permission_denied(tmp_path, two_tokens):
    from tunewright.data.app import start_data

    server = start_data("127.0.0.1:0", tmp_path / "data", security=ServerSecurity.from_options(two_tokens))
    address = f"127.0.0.1:{server.port}"
    try:
        content = ("\n".join(ticket_lines(20)) + "\n").encode()
        with Client(connection=Connection.resolve(data=address, token="read-only")) as reader:
            assert reader.list_datasets() == []
            with pytest.raises(ServiceError) as caught:
                reader.upload_bytes("t.jsonl", content)
            assert caught.value.code == "PERMISSION_DENIED"
            assert "'reader' may read" in caught.value.message and "needs 'write'" in caught.value.message
        with Client(connection=Connection.resolve(data=address, token="writer")) as writer:
            assert writer.upload_bytes("t.jsonl", content).name.startswith("files/")
        with Client(connection=Connection.resolve(data=address, token="nope")) as stranger:
            with pytest.raises(ServiceError) as caught:
                stranger.list_datasets()
            assert caught.value.code == "UNAUTHENTICATED"
    finally:
        server.stop(grace=0)


def test_mutual_tls_needs_a_client_certificate_and_protected_health_a_token(tmp_path):
    from tunewright.data.app import start_data

    secrets = generate_local_secrets(tmp_path / "secrets")
    security = ServerSecurity.from_options(
        secrets.tokens_file,
        secrets.path("server.pem"),
        secrets.path("server.key"),
        client_ca=secrets.path("ca.pem"),
        protect_health=True,
    )
    server = start_data("127.0.0.1:0", tmp_path / "data", security=security)
    address = f"127.0.0.1:{server.port}"
    health = health_pb2.HealthCheckRequest(service="")
    try:
        with open_channel(address, secrets.channel_security(mutual=True)) as channel:
            assert health_pb2_grpc.HealthStub(channel).Check(health, timeout=10).status == 1  # SERVING
        no_certificate = ChannelSecurity(secrets.token_file.read_text().strip(), secrets.path("ca.pem"))
        with open_channel(address, no_certificate) as channel, pytest.raises(grpc.RpcError) as caught:
            health_pb2_grpc.HealthStub(channel).Check(health, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        anonymous = ChannelSecurity(
            None, secrets.path("ca.pem"), secrets.path("client.pem"), secrets.path("client.key")
        )
        with open_channel(address, anonymous) as channel, pytest.raises(grpc.RpcError) as caught:
            health_pb2_grpc.HealthStub(channel).Check(health, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop(grace=0)
