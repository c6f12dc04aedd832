"""A held answer on its way to the hub, inside the review-requested event.

With `review.mode = "hold"` and `review.store = "hub"`, the model's answer a
client is waiting for leaves the sidecar only in the review-requested event:
the hub must show it at the status URL once a reviewer approves. The event
carries it as the `held` field: status, headers (latin-1 text pairs) and the
body in base64 (answers may be binary tensors). An answer larger than
`review.held_max_bytes` is not carried (a Kafka message has its own limit,
1 MiB by default): the field then says how large it was and why it is
missing, and the hub shows the verdict without the answer, saying so.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from sidecar.review.model import HeldAnswer


def held_field(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes, max_bytes: int
) -> dict[str, Any]:
    """The event's `held` field for an answer held back from a client."""
    field: dict[str, Any] = {
        "status": status,
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers],
        "body_bytes": len(body),
        "body_base64": None,
        "omitted": None,
    }
    if len(body) > max_bytes:
        field["omitted"] = (
            f"the model's answer ({len(body)} bytes) was larger than review.held_max_bytes"
            f" ({max_bytes}) on the sidecar, so it was not sent to the hub: the client gets"
            " the verdict only"
        )
    else:
        field["body_base64"] = base64.b64encode(body).decode("ascii")
    return field


def held_answer(field: Any) -> HeldAnswer | None:
    """The held answer a hub keeps from an event's `held` field; None when it is not one."""
    if not isinstance(field, dict):
        return None
    status, headers = field.get("status"), field.get("headers")
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        return None
    if not isinstance(headers, list) or not all(
        isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in headers
    ):
        return None
    omitted = field.get("omitted")
    encoded = field.get("body_base64")
    if isinstance(encoded, str):
        try:
            body = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return None
        omitted = None
    elif isinstance(omitted, str) and omitted:
        body = b""
    else:
        return None
    return HeldAnswer(status, [(h[0], h[1]) for h in headers], body, omitted)
