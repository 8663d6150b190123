"""gRPC mapping of the data service: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

from tunewright.core.errors import FieldViolation, InvalidArgument
from tunewright.core.ids import parse_name
from tunewright.core.timeutil import to_timestamp
from tunewright.data.split import DEFAULT_TEST_FRACTION, DEFAULT_VALIDATION_FRACTION, SplitPlan
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


def dataset_pb(record: DatasetRecord) -> pb.Dataset:
    return pb.Dataset(
        name=f"datasets/{record.id}",
        display_name=record.display_name,
        file=f"files/{record.file_id}",
        format=pb.DATASET_FORMAT_CHAT,
        example_count=record.example_count,
        split_counts=pb.SplitCounts(**record.split_counts),
        validation_fraction=record.validation_fraction,
        test_fraction=record.test_fraction,
        split_seed=record.split_seed,
        create_time=to_timestamp(record.create_time),
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
        if request.format not in (pb.DATASET_FORMAT_UNSPECIFIED, pb.DATASET_FORMAT_CHAT):
            raise InvalidArgument(
                "only DATASET_FORMAT_CHAT is supported so far",
                reason="UNSUPPORTED_FORMAT",
                violations=[FieldViolation("format", "unsupported")],
            )
        plan = SplitPlan(
            validation_fraction=request.validation_fraction
            if request.HasField("validation_fraction")
            else DEFAULT_VALIDATION_FRACTION,
            test_fraction=request.test_fraction if request.HasField("test_fraction") else DEFAULT_TEST_FRACTION,
            seed=request.split_seed,
        )
        file_id = parse_name(request.file, "files", field="file")
        record = self.store.create_dataset(request.request_id, file_id, request.display_name, plan)
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
        for index, messages in enumerate(self.store.read_dataset(dataset_id, split)):
            yield pb.ReadDatasetResponse(
                index=index, example=pb.Example(messages=[pb.ChatMessage(**m) for m in messages])
            )


def register(store: DataStore):
    def add(server) -> None:
        pb_grpc.add_DataServiceServicer_to_server(DataServicer(store), server)

    return add
