"""The data service through a real gRPC server on a loopback port."""

from __future__ import annotations

import hashlib
import json

import grpc
import pytest

from conftest import rich_error, ticket_lines
from tunewright.client import ServiceError
from tunewright.data.v1 import data_service_pb2 as pb


def list_names(services) -> list[str]:
    return [d.name for d in services.client.data.ListDatasets(pb.ListDatasetsRequest(page_size=1000)).datasets]


def test_upload_create_get_read(services, small_jsonl):
    client = services.client
    file = client.upload(small_jsonl)
    assert file.name.startswith("files/") and file.size_bytes == small_jsonl.stat().st_size
    assert file.sha256 == hashlib.sha256(small_jsonl.read_bytes()).hexdigest()
    dataset = client.create_dataset(file.name, display_name="small")
    assert dataset.example_count == 40
    assert (dataset.split_counts.train, dataset.split_counts.validation, dataset.split_counts.test) == (32, 4, 4)
    assert client.get_dataset(dataset.name) == dataset
    assert client.data.GetDataset(pb.GetDatasetRequest(name=dataset.name)).dataset.example_count == 40
    assert dataset.name in list_names(services)
    test = list(client.data.ReadDataset(pb.ReadDatasetRequest(name=dataset.name, split=pb.SPLIT_TEST)))
    assert [r.index for r in test] == [0, 1, 2, 3]
    originals = {json.dumps(json.loads(line)["messages"]) for line in ticket_lines(40)}
    for response in test:
        messages = [{"role": m.role, "content": m.content} for m in response.example.messages]
        assert json.dumps(messages) in originals


def test_same_request_id_returns_the_first_dataset(services, small_jsonl):
    client = services.client
    file = client.upload(small_jsonl)
    first = client.data.CreateDataset(pb.CreateDatasetRequest(request_id="same", file=file.name)).dataset
    again = client.data.CreateDataset(pb.CreateDatasetRequest(request_id="same", file=file.name)).dataset
    assert first.name == again.name
    assert list_names(services).count(first.name) == 1


def test_bad_file_is_refused_naming_every_bad_line_and_nothing_is_stored(services):
    lines = ticket_lines(20)
    lines[6] = lines[6][:-5]  # line 7: JSON cut off
    record = json.loads(lines[11])
    record["messages"][1]["role"] = "customer"  # line 12: unknown role
    lines[11] = json.dumps(record)
    before = list_names(services)
    file = services.client.upload_bytes("bad.jsonl", ("\n".join(lines) + "\n").encode())
    with pytest.raises(ServiceError) as caught:  # the client unpacks the rich status
        services.client.create_dataset(file.name)
    assert caught.value.code == "INVALID_ARGUMENT" and caught.value.reason == "INVALID_DATASET_FILE"
    fields = [f for f, _ in caught.value.violations]
    assert "line 7" in fields and "line 12: messages[1].role" in fields
    assert "line 7" in caught.value.message and "line 12" in caught.value.message
    assert list_names(services) == before
    assert not any(
        p.name.startswith("ds-") and p.name not in {n.split("/")[1] for n in before}
        for p in (services.root / "data" / "datasets").iterdir()
    )


@pytest.mark.parametrize(
    ("size_delta", "sha", "reason"),
    [
        (1, None, "UPLOAD_SIZE_MISMATCH"),
        (-1, None, "UPLOAD_SIZE_MISMATCH"),
        (0, "0" * 64, "UPLOAD_CHECKSUM_MISMATCH"),
        (0, "not-a-hash", "INVALID_UPLOAD_HEADER"),
    ],
)
def test_uploads_that_do_not_match_their_header_are_refused(services, size_delta, sha, reason):
    content = b'{"messages": []}\n' * 10
    with pytest.raises(ServiceError) as caught:
        services.client.upload_bytes("x.jsonl", content, size_bytes=len(content) + size_delta, sha256=sha)
    assert (caught.value.code, caught.value.reason) == ("INVALID_ARGUMENT", reason)
    leftovers = [p for p in (services.root / "data" / "files").iterdir() if p.name.startswith(".upload")]
    assert leftovers == []


def test_missing_and_malformed_names(services):
    data = services.client.data
    with pytest.raises(grpc.RpcError) as caught:
        data.GetDataset(pb.GetDatasetRequest(name="datasets/nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        data.GetDataset(pb.GetDatasetRequest(name="nope"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rich_error(caught.value)[1][0][0] == "name"
    with pytest.raises(ServiceError) as caught:
        services.client.create_dataset("files/nope")
    assert caught.value.code == "NOT_FOUND"


def test_list_pages_through_every_dataset(services, small_jsonl):
    client = services.client
    file = client.upload(small_jsonl)
    for _ in range(3):
        client.create_dataset(file.name)
    seen, token = [], ""
    while True:
        page = client.data.ListDatasets(pb.ListDatasetsRequest(page_size=2, page_token=token))
        seen += [d.name for d in page.datasets]
        token = page.next_page_token
        if not token:
            break
    assert seen == list_names(services) and len(seen) == len(set(seen)) >= 3


def test_csv_with_a_mapping_statistics_and_the_cleaning_report_over_grpc(services, tiny_model):
    rows = ["ticket,triage"]
    for i in range(20):
        rows.append(f'"Ticket {i}: write to ops{i}@example.com","urgency: low\nreason: case {i}."')
    rows += [rows[1], rows[2].upper()]  # rows 21 and 22 repeat rows 1 and 2
    file = services.client.upload_bytes("tickets.csv", ("\n".join(rows) + "\n").encode())
    request = pb.CreateDatasetRequest(
        file=file.name,
        column_mapping={"prompt": "ticket", "completion": "triage"},
        tokenizer_model=str(tiny_model),
        cleaning=pb.CleaningOptions(near_duplicates=pb.NEAR_DUPLICATES_OFF),
    )
    dataset = services.client.data.CreateDataset(request).dataset
    assert dataset.format == pb.DATASET_FORMAT_PROMPT_COMPLETION and dataset.reader == "csv"
    assert dataset.source_sha256 == file.sha256 and dataset.cleaning.exact_dedupe and dataset.cleaning.scrub_pii
    assert dataset.cleaning.near_duplicates == pb.NEAR_DUPLICATES_OFF and dataset.cleaning.max_seq_length == 512
    cleaning = dataset.stats.cleaning
    assert (cleaning.read, cleaning.exact_duplicates_removed, dataset.example_count) == (22, 2, 20)
    assert cleaning.pii_examples == 20 and dict(cleaning.pii_replacements) == {"EMAIL": 20}
    assert sum(s.examples for s in (dataset.stats.train, dataset.stats.validation, dataset.stats.test)) == 20
    assert dataset.stats.train.loss_tokens > 0 and dataset.stats.train.turns == 2 * dataset.stats.train.examples

    actions, token = [], ""
    while True:
        page = services.client.data.GetDatasetReport(
            pb.GetDatasetReportRequest(name=dataset.name, page_size=8, page_token=token)
        )
        actions += page.actions
        token = page.next_page_token
        if not token:
            break
    assert page.stats == dataset.stats
    removed = [
        (a.line, a.duplicate_of_line) for a in actions if a.kind == pb.CleaningAction.KIND_EXACT_DUPLICATE_REMOVED
    ]
    assert removed == [(21, 1), (22, 2)]
    replaced = [a for a in actions if a.kind == pb.CleaningAction.KIND_PII_REPLACED]
    assert [a.line for a in replaced] == list(range(1, 21)) and dict(replaced[0].pii_replacements) == {"EMAIL": 1}
    test = services.client.data.ReadDataset(pb.ReadDatasetRequest(name=dataset.name, split=pb.SPLIT_TRAIN))
    assert all("<EMAIL>" in r.example.messages[0].content for r in test)


def test_formats_are_listed_and_a_bad_format_or_option_is_refused(services, small_jsonl):
    listed = services.client.data.ListDataFormats(pb.ListDataFormatsRequest())
    assert [f.name for f in listed.formats] == ["chat", "prompt_completion", "alpaca", "sharegpt", "text"]
    assert set(listed.readers) == {"jsonl", "txt", "csv", "parquet"}
    file = services.client.upload(small_jsonl)
    for request, reason, field in [
        (pb.CreateDatasetRequest(file=file.name, format_name="tickets"), "UNKNOWN_FORMAT", "format_name"),
        (
            pb.CreateDatasetRequest(file=file.name, format=pb.DATASET_FORMAT_ALPACA, format_name="chat"),
            "FORMAT_MISMATCH",
            "format_name",
        ),
        (
            pb.CreateDatasetRequest(file=file.name, cleaning=pb.CleaningOptions(near_duplicate_threshold=1.5)),
            "INVALID_CLEANING_OPTIONS",
            "cleaning.near_duplicate_threshold",
        ),
        (
            pb.CreateDatasetRequest(file=file.name, tokenizer_model="/no/such/model"),
            "UNKNOWN_BASE_MODEL",
            "tokenizer_model",
        ),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            services.client.data.CreateDataset(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        got_reason, violations = rich_error(caught.value)
        assert got_reason == reason and field in [f for f, _ in violations], (got_reason, violations)
