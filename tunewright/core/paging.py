"""Page tokens for List RPCs: an opaque offset into a stable order."""

from __future__ import annotations

import base64

from tunewright.core.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_bounds(page_size: int, page_token: str) -> tuple[int, int]:
    """(offset, limit) for a List request."""
    if page_size < 0:
        raise InvalidArgument(
            "page_size must not be negative",
            reason="INVALID_PAGE_SIZE",
            violations=[FieldViolation("page_size", "must be 0 (default) or positive")],
        )
    limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not page_token:
        return 0, limit
    try:
        offset = int(base64.urlsafe_b64decode(page_token.encode()).decode().removeprefix("o:"))
    except ValueError:
        offset = -1
    if offset < 0:
        raise InvalidArgument(
            "page_token is not one this server issued; pass next_page_token from the previous page",
            reason="INVALID_PAGE_TOKEN",
            violations=[FieldViolation("page_token", "unrecognised token")],
        )
    return offset, limit


def next_token(offset: int, limit: int, returned: int) -> str:
    if returned < limit:
        return ""
    return base64.urlsafe_b64encode(f"o:{offset + returned}".encode()).decode()
