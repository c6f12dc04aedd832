"""`GET /decisions/{id}` without FastAPI's per-request machinery, for the answers that succeed.

Measured in the hub's process, a lookup through the FastAPI route cost about
0.6 ms of CPU more than its one statement, most of it solving the route's
dependencies (the query check, the bearer scheme, the role check, the path
parameters), and that CPU is what the lookup's tail waits for on a busy core.
This middleware answers the plain case itself: a GET of `/decisions/{id}` or
`/decisions/{id}/{row}` with no query string, a valid id and row, and a bearer
token whose role may look up. It calls the route's own lookup and serialises
with the route's response model, so the answer is the route's, byte for byte.
Anything else (no or an unknown token, a role that may not, a bad id, a query
string, a decision not found, an error) goes on to the FastAPI app, which gives
the error answers as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import TypeAdapter
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from sidecar.control.auth import Principal
from sidecar.review.schemas import LookupOut

# The routes' own constraints: RequestId's pattern, and {row:int} with 0 <= row <= 1,000,000.
_PATH = re.compile(r"/decisions/([A-Za-z0-9._:\-]{1,128})(?:/([0-9]{1,7}))?")
_MAX_ROW = 1_000_000
# FastAPI serialises a route's return value with a TypeAdapter of its response model, by alias.
_OUT = TypeAdapter(LookupOut)


def decision_key(path: str) -> str | None:
    """`{id}/{row}` for a path the lookup routes take, else None."""
    m = _PATH.fullmatch(path)
    if m is None:
        return None
    row = int(m.group(2)) if m.group(2) is not None else 0
    return None if row > _MAX_ROW else f"{m.group(1)}/{row}"


class FastLookup:
    """ASGI middleware in front of the hub's app; see the module."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        lookup: Callable[[str, Principal], LookupOut],
        require: Callable[[HTTPAuthorizationCredentials | None], Principal],
    ) -> None:
        self.app = app
        self._lookup = lookup
        self._require = require

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope["query_string"]:
            key = decision_key(scope["path"])
            if key is not None:
                body = await self._answer(scope, key)
                if body is not None:
                    await Response(body, media_type="application/json")(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, key: str) -> bytes | None:
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break  # the first, as Starlette's headers.get
        # As fastapi.security.HTTPBearer(auto_error=False) reads the header.
        scheme, credentials = get_authorization_scheme_param(authorization)
        if not (authorization and scheme and credentials) or scheme.lower() != "bearer":
            return None
        try:
            who = self._require(
                HTTPAuthorizationCredentials(scheme=scheme, credentials=credentials)
            )
            out = await run_in_threadpool(self._lookup, key, who)
        except Exception:
            # 401, 403, 404 or a failure: the app answers it, in its own words.
            return None
        return _OUT.dump_json(out, by_alias=True)
