"""The split's plan: fractions for validation and test, and the seed.

The split itself is done on near-duplicate groups by ``tunewright.data.pipeline``.
"""

from __future__ import annotations

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
