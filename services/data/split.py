"""Deterministic train/validation/test split.

Each example is ranked by a hash of the seed and its content, so the same file, fractions
and seed always give the same split, whatever order the lines came in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from tunewright.core.errors import FieldViolation, InvalidArgument

DEFAULT_VALIDATION_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.1

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitPlan:
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    test_fraction: float = DEFAULT_TEST_FRACTION
    seed: int = 0

    def check(self) -> None:
        violations = []
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                violations.append(FieldViolation(name, f"must be in [0, 1), got {value}"))
        if not violations and self.validation_fraction + self.test_fraction >= 1.0:
            violations.append(
                FieldViolation("test_fraction", "validation_fraction + test_fraction must leave examples to train on")
            )
        if violations:
            raise InvalidArgument(
                "; ".join(f"{v.field} {v.description}" for v in violations),
                reason="INVALID_SPLIT",
                violations=violations,
            )


def _rank(seed: int, example: list[dict[str, str]]) -> str:
    canonical = json.dumps(example, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{seed}\n{canonical}".encode()).hexdigest()


def split_examples(examples: list, plan: SplitPlan) -> dict[str, list]:
    plan.check()
    ordered = sorted(examples, key=lambda example: _rank(plan.seed, example))
    n = len(ordered)
    n_test = round(n * plan.test_fraction)
    n_validation = round(n * plan.validation_fraction)
    if n - n_test - n_validation < 1:
        raise InvalidArgument(
            f"{n} example(s) leave none to train on after the split; add examples or lower the fractions",
            reason="TOO_FEW_EXAMPLES",
            violations=[FieldViolation("file", f"{n} example(s)")],
        )
    return {
        "test": ordered[:n_test],
        "validation": ordered[n_test : n_test + n_validation],
        "train": ordered[n_test + n_validation :],
    }
