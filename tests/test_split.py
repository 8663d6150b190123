"""The split as CreateDataset does it (tunewright.data.pipeline), on the data service's store.
Near duplicates are off here so that every example is its own group; groups are in
test_data_preparation.py."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from tunewright.core.errors import InvalidArgument
from tunewright.data.cleaning import CleaningOptions, NearDuplicates
from tunewright.data.split import SPLITS, SplitPlan
from tunewright.data.store import DataStore

ALONE = CleaningOptions(near_duplicates=NearDuplicates.OFF, scrub_pii=False)


def examples(n: int) -> list:
    return [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(n)]


def split_examples(store: DataStore, tiny_model, data: list, plan: SplitPlan) -> dict[str, list]:
    content = "".join(json.dumps({"messages": e}) + "\n" for e in data).encode()
    file = store.upload_file("", "data.jsonl", len(content), hashlib.sha256(content).hexdigest(), [content])
    dataset = store.create_dataset("", file.id, "", plan, cleaning=ALONE, tokenizer_model=str(tiny_model))
    return {split: [e["messages"] for e in store.read_dataset(dataset.id, split)] for split in SPLITS}


@pytest.fixture
def store(tmp_path) -> DataStore:
    return DataStore(tmp_path / "data")


def test_default_split_is_80_10_10_and_covers_every_example_once(store, tiny_model):
    parts = split_examples(store, tiny_model, examples(100), SplitPlan())
    assert [len(parts[s]) for s in ("train", "validation", "test")] == [80, 10, 10]
    seen = [str(e) for part in parts.values() for e in part]
    assert sorted(seen) == sorted(str(e) for e in examples(100))


def test_split_depends_on_content_and_seed_not_on_line_order(store, tiny_model):
    data = examples(50)
    shuffled = data[:]
    random.Random(3).shuffle(shuffled)
    seven = split_examples(store, tiny_model, data, SplitPlan(seed=7))
    assert seven == split_examples(store, tiny_model, shuffled, SplitPlan(seed=7))
    assert seven["test"] != split_examples(store, tiny_model, data, SplitPlan(seed=8))["test"]


@pytest.mark.parametrize(("validation", "test"), [(-0.1, 0.1), (0.5, 0.5), (0.1, 1.0)])
def test_impossible_fractions_are_refused(store, tiny_model, validation, test):
    with pytest.raises(InvalidArgument):
        split_examples(store, tiny_model, examples(10), SplitPlan(validation, test))


def test_too_few_examples_to_train_is_refused(store, tiny_model):
    with pytest.raises(InvalidArgument) as caught:
        split_examples(store, tiny_model, examples(2), SplitPlan(0.4, 0.5))
    assert caught.value.reason == "TOO_FEW_EXAMPLES"
