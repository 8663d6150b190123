"""Resource names: "kind/{id}" with short random ids."""

from __future__ import annotations

import secrets

from tunewright.core.errors import FieldViolation, InvalidArgument


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def parse_name(name: str, collection: str, field: str = "name") -> str:
    """Returns the id of ``collection/{id}``, or raises InvalidArgument naming ``field``."""
    prefix = f"{collection}/"
    resource_id = name[len(prefix) :] if name.startswith(prefix) else ""
    if not resource_id or "/" in resource_id:
        raise InvalidArgument(
            f"{field} must look like '{collection}/{{id}}', got {name!r}",
            reason="MALFORMED_NAME",
            violations=[FieldViolation(field, f"expected '{collection}/{{id}}', got {name!r}")],
        )
    return resource_id


def parse_job_or_checkpoint(name: str, field: str = "name") -> tuple[str, int | None]:
    """Splits "jobs/{job}/checkpoints/{step}" into ("jobs/{job}", step); "jobs/{job}" into
    (itself, None). The job part is left for ``parse_name`` to check."""
    job, separator, step = name.partition("/checkpoints/")
    if not separator:
        return name, None
    if not step.isdigit():
        raise InvalidArgument(
            f"{field} must look like 'jobs/{{job}}/checkpoints/{{step}}', got {name!r}",
            reason="MALFORMED_NAME",
            violations=[FieldViolation(field, f"the step must be a number, got {step!r}")],
        )
    return job, int(step)
