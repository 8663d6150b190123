from __future__ import annotations

import random

import pytest

from tunewright.core.errors import InvalidArgument
from tunewright.data.split import SplitPlan, split_examples


def examples(n: int) -> list:
    return [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(n)]


def test_default_split_is_80_10_10_and_covers_every_example_once():
    parts = split_examples(examples(100), SplitPlan())
    assert [len(parts[s]) for s in ("train", "validation", "test")] == [80, 10, 10]
    seen = [str(e) for part in parts.values() for e in part]
    assert sorted(seen) == sorted(str(e) for e in examples(100))


def test_split_depends_on_content_and_seed_not_on_line_order():
    data = examples(50)
    shuffled = data[:]
    random.Random(3).shuffle(shuffled)
    assert split_examples(data, SplitPlan(seed=7)) == split_examples(shuffled, SplitPlan(seed=7))
    assert split_examples(data, SplitPlan(seed=7))["test"] != split_examples(data, SplitPlan(seed=8))["test"]


@pytest.mark.parametrize(("validation", "test"), [(-0.1, 0.1), (0.5, 0.5), (0.1, 1.0)])
def test_impossible_fractions_are_refused(validation, test):
    with pytest.raises(InvalidArgument):
        split_examples(examples(10), SplitPlan(validation, test))


def test_too_few_examples_to_train_is_refused():
    with pytest.raises(InvalidArgument) as caught:
        split_examples(examples(2), SplitPlan(0.4, 0.5))
    assert caught.value.reason == "TOO_FEW_EXAMPLES"
