"""gRPC mapping of the data service: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

from tunewright.core.errors import FieldViolation, InvalidArgument
from tunewright.core.ids import parse_name
from tunewright.core.timeutil import to_timestamp
from tunewright.data import pipeline
from tunewright.data.cleaning import CleaningOptions, NearDuplicates
from tunewright.data.split import DEFAULT_TEST_FRACTION, DEFAULT_VALIDATION_FRACTION, SPLITS, SplitPlan
from tunewright.data.store import DatasetRecord, DataStore, FileRecord
from tunewright.data.v1 import data_service_pb2 as pb
from tunewright.data.v1 import data_service_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DataService"].full_name

_SPLIT_NAMES = {pb.SPLIT_TRAIN: "train", pb.SPLIT_VALIDATION: "validation", pb.SPLIT_TEST: "test"}


def file_pb(record: FileRecord) -> pb.File:
    return pb.File(
        name=f"files/{record.id}",
        filename=record.filename,
        size_bytes=record.size_bytes,
        sha256=record.sha256,
        create_time=to_timestamp(record.create_time),
    )


# Built-in format names and their enum values; a plugin's format is DATASET_FORMAT_PLUGIN.
FORMATS = {
    "chat": pb.DATASET_FORMAT_CHAT,
    "prompt_completion": pb.DATASET_FORMAT_PROMPT_COMPLETION,
    "alpaca": pb.DATASET_FORMAT_ALPACA,
    "sharegpt": pb.DATASET_FORMAT_SHAREGPT,
    "text": pb.DATASET_FORMAT_TEXT,
}
_FORMAT_NAMES = {value: name for name, value in FORMATS.items()}
_NEAR_DUPLICATES = {
    pb.NEAR_DUPLICATES_UNSPECIFIED: NearDuplicates.GROUP,
    pb.NEAR_DUPLICATES_GROUP: NearDuplicates.GROUP,
    pb.NEAR_DUPLICATES_REMOVE: NearDuplicates.REMOVE,
    pb.NEAR_DUPLICATES_OFF: NearDuplicates.OFF,
}
_ACTIONS = {
    pipeline.EXACT_DUPLICATE_REMOVED: pb.CleaningAction.KIND_EXACT_DUPLICATE_REMOVED,
    pipeline.NEAR_DUPLICATE_REMOVED: pb.CleaningAction.KIND_NEAR_DUPLICATE_REMOVED,
    pipeline.PII_REPLACED: pb.CleaningAction.KIND_PII_REPLACED,
    pipeline.OVERLENGTH_REMOVED: pb.CleaningAction.KIND_OVERLENGTH_REMOVED,
    pipeline.OVERLENGTH: pb.CleaningAction.KIND_OVERLENGTH,
    pipeline.LEAKED_TEST_EXAMPLE: pb.CleaningAction.KIND_LEAKED_TEST_EXAMPLE,
}


def cleaning_options(request: pb.CleaningOptions) -> CleaningOptions:
    defaults = CleaningOptions()
    return CleaningOptions(
        exact_dedupe=request.exact_dedupe if request.HasField("exact_dedupe") else defaults.exact_dedupe,
        near_duplicates=_NEAR_DUPLICATES[request.near_duplicates],
        near_duplicate_threshold=request.near_duplicate_threshold
        if request.HasField("near_duplicate_threshold")
        else defaults.near_duplicate_threshold,
        scrub_pii=request.scrub_pii if request.HasField("scrub_pii") else defaults.scrub_pii,
        max_seq_length=request.max_seq_length or defaults.max_seq_length,
        drop_overlength=request.drop_overlength if request.HasField("drop_overlength") else defaults.drop_overlength,
    )


def cleaning_pb(options: dict) -> pb.CleaningOptions:
    near = {v: k for k, v in _NEAR_DUPLICATES.items() if k != pb.NEAR_DUPLICATES_UNSPECIFIED}
    return pb.CleaningOptions(
        exact_dedupe=options["exact_dedupe"],
        near_duplicates=near[NearDuplicates(options["near_duplicates"])],
        near_duplicate_threshold=options["near_duplicate_threshold"],
        scrub_pii=options["scrub_pii"],
        max_seq_length=options["max_seq_length"],
        drop_overlength=options["drop_overlength"],
    )


def stats_pb(stats: dict) -> pb.DatasetStats:
    if not stats:
        return pb.DatasetStats()
    splits = {
        split: pb.SplitStats(
            **{k: v for k, v in stats[split].items() if k != "length_histogram"},
            length_histogram=[pb.LengthBucket(**bucket) for bucket in stats[split]["length_histogram"]],
        )
        for split in SPLITS
    }
    return pb.DatasetStats(**splits, cleaning=pb.CleaningCounts(**stats["cleaning"]))


def dataset_pb(record: DatasetRecord) -> pb.Dataset:
    details = record.details
    return pb.Dataset(
        name=f"datasets/{record.id}",
        display_name=record.display_name,
        file=f"files/{record.file_id}",
        format=FORMATS.get(record.format, pb.DATASET_FORMAT_PLUGIN),
        example_count=record.example_count,
        split_counts=pb.SplitCounts(**record.split_counts),
        validation_fraction=record.validation_fraction,
        test_fraction=record.test_fraction,
        split_seed=record.split_seed,
        create_time=to_timestamp(record.create_time),
        format_name=record.format,
        reader=details.get("reader", ""),
        source_sha256=details.get("source_sha256", ""),
        column_mapping=details.get("column_mapping", {}),
        cleaning=cleaning_pb(details["cleaning"]) if "cleaning" in details else None,
        tokenizer_model=details.get("tokenizer_model", ""),
        stats=stats_pb(details.get("stats", {})),
    )


def example_pb(example: dict) -> pb.Example:
    if "text" in example:
        return pb.Example(text=example["text"])
    return pb.Example(messages=[pb.ChatMessage(**m) for m in example["messages"]])


def action_pb(line: dict) -> pb.CleaningAction:
    return pb.CleaningAction(
        line=line["line"],
        kind=_ACTIONS[line["kind"]],
        duplicate_of_line=line.get("duplicate_of", 0),
        pii_replacements=line.get("pii", {}),
        tokens=line.get("tokens", 0),
    )


class DataServicer(pb_grpc.DataServiceServicer):
    def __init__(self, store: DataStore) -> None:
        self.store = store

    def UploadFile(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("content") != "header":
            raise InvalidArgument(
                "the first UploadFile message must carry the header (filename, size_bytes, sha256)",
                reason="MISSING_UPLOAD_HEADER",
                violations=[FieldViolation("header", "required in the first message")],
            )
        header = first.header

        def chunks():
            for message in request_iterator:
                if message.WhichOneof("content") != "chunk":
                    raise InvalidArgument(
                        "only the first UploadFile message may carry a header",
                        reason="REPEATED_UPLOAD_HEADER",
                        violations=[FieldViolation("header", "sent more than once")],
                    )
                yield message.chunk

        record = self.store.upload_file(header.request_id, header.filename, header.size_bytes, header.sha256, chunks())
        return pb.UploadFileResponse(file=file_pb(record))

    def CreateDataset(self, request, context):
        format_name = request.format_name
        if request.format == pb.DATASET_FORMAT_PLUGIN and not format_name:
            raise InvalidArgument(
                "format DATASET_FORMAT_PLUGIN needs the plugin format's name in format_name",
                reason="MISSING_FORMAT_NAME",
                violations=[FieldViolation("format_name", "required with DATASET_FORMAT_PLUGIN")],
            )
        if request.format in _FORMAT_NAMES:
            if format_name and format_name != _FORMAT_NAMES[request.format]:
                raise InvalidArgument(
                    f"format {pb.DatasetFormat.Name(request.format)} and format_name {format_name!r} disagree; give one",
                    reason="FORMAT_MISMATCH",
                    violations=[FieldViolation("format_name", f"is not {_FORMAT_NAMES[request.format]!r}")],
                )
            format_name = _FORMAT_NAMES[request.format]
        plan = SplitPlan(
            validation_fraction=request.validation_fraction
            if request.HasField("validation_fraction")
            else DEFAULT_VALIDATION_FRACTION,
            test_fraction=request.test_fraction if request.HasField("test_fraction") else DEFAULT_TEST_FRACTION,
            seed=request.split_seed,
        )
        file_id = parse_name(request.file, "files", field="file")
        record = self.store.create_dataset(
            request.request_id,
            file_id,
            request.display_name,
            plan,
            format_name=format_name,
            column_mapping=dict(request.column_mapping),
            cleaning=cleaning_options(request.cleaning),
            tokenizer_model=request.tokenizer_model,
        )
        return pb.CreateDatasetResponse(dataset=dataset_pb(record))

    def GetDataset(self, request, context):
        record = self.store.get_dataset(parse_name(request.name, "datasets"))
        return pb.GetDatasetResponse(dataset=dataset_pb(record))

    def ListDatasets(self, request, context):
        records, token = self.store.list_datasets(request.page_size, request.page_token)
        return pb.ListDatasetsResponse(datasets=[dataset_pb(r) for r in records], next_page_token=token)

    def ReadDataset(self, request, context):
        dataset_id = parse_name(request.name, "datasets")
        split = _SPLIT_NAMES.get(request.split)
        if split is None:
            raise InvalidArgument(
                "split must be SPLIT_TRAIN, SPLIT_VALIDATION or SPLIT_TEST",
                reason="MISSING_SPLIT",
                violations=[FieldViolation("split", "required")],
            )
        for index, example in enumerate(self.store.read_dataset(dataset_id, split)):
            yield pb.ReadDatasetResponse(index=index, example=example_pb(example))

    def GetDatasetReport(self, request, context):
        dataset_id = parse_name(request.name, "datasets")
        lines, token = self.store.read_report(dataset_id, request.page_size, request.page_token)
        stats = self.store.get_dataset(dataset_id).details.get("stats", {})
        return pb.GetDatasetReportResponse(
            stats=stats_pb(stats), actions=[action_pb(line) for line in lines], next_page_token=token
        )

    def ListDataFormats(self, request, context):
        formats = self.store.formats
        return pb.ListDataFormatsResponse(
            formats=[
                pb.DataFormatInfo(name=f.name, description=f.description, fields=list(f.fields))
                for f in formats.formats.values()
            ],
            readers=list(formats.readers),
        )


def register(store: DataStore):
    def add(server) -> None:
        pb_grpc.add_DataServiceServicer_to_server(DataServicer(store), server)

    return add
