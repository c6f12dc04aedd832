"""What the proxy's client gets when the upstream fails (README, "Upstream errors").

| status | cause             | when                                                              |
| ------ | ----------------- | ----------------------------------------------------------------- |
| 502    | `connect_failed`  | the connection was refused or could not be opened                 |
| 502    | `connect_timeout` | no connection within `proxy.connect_timeout_s`                    |
| 502    | `tls`             | the certificate failed verification, or the TLS handshake failed  |
| 502    | `disconnected`    | the upstream closed the connection before its answer was complete |
| 502    | `bad_response`    | the answer is not HTTP/1.x                                        |
| 503    | `busy`            | pass-through calls already hold `proxy.max_stream_connections`    |
| 504    | `timeout`         | the upstream left the call idle past `proxy.timeout_s`            |

Details name causes, never the upstream's address (the client need not learn
where the sidecar forwards to); the log names it.

502 says the upstream could not be used (for the `connect_*` and `tls` causes
nothing was sent, so any call may be retried); 504 says it had the request and
was too slow, so it may have acted on it. A connect timeout is therefore a 502:
it is an unreachable upstream, not a slow one.
"""

from __future__ import annotations

import logging
import ssl

import orjson

log = logging.getLogger("sidecar.dataplane.upstream")


class UpstreamError(Exception):
    """The upstream could not be used (502) or did not answer in time (504).

    A plain exception class: a frozen dataclass refuses the `__traceback__`
    that contextlib's managers set on an exception passing through them.
    """

    def __init__(self, status: int, cause: str, detail: str) -> None:
        super().__init__(status, cause, detail)
        self.status = status
        self.cause = cause
        self.detail = detail

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "error": "upstream " + ("timeout" if self.status == 504 else "unavailable"),
                "cause": self.cause,
                "detail": self.detail,
            }
        )


def connect_error(exc: BaseException, where: str, timeout_s: float) -> UpstreamError:
    """Map a failure to open a connection (TCP, then TLS) to `where` (logged, not told to the client)."""
    log.warning("cannot use the upstream %s: %r", where, exc)
    if isinstance(exc, TimeoutError):
        return UpstreamError(
            502, "connect_timeout", f"no connection to the upstream within {timeout_s}s"
        )
    if isinstance(exc, ssl.SSLError):
        # Before OSError, which SSLError is. The reason (CERTIFICATE_VERIFY_FAILED...),
        # not the message: that one names the host the certificate was checked against.
        reason = exc.reason or type(exc).__name__
        return UpstreamError(502, "tls", f"TLS with the upstream failed: {reason}")
    if isinstance(exc, OSError):
        return UpstreamError(
            502, "connect_failed", f"cannot connect to the upstream: {exc.strerror or 'refused'}"
        )
    raise exc


def busy(limit: int) -> UpstreamError:
    return UpstreamError(
        503,
        "busy",
        f"{limit} pass-through calls are in flight (proxy.max_stream_connections); retry later",
    )


def disconnected(exc: BaseException | None = None) -> UpstreamError:
    return UpstreamError(502, "disconnected", str(exc) if exc else "upstream closed the connection")


def bad_response(exc: BaseException) -> UpstreamError:
    return UpstreamError(502, "bad_response", f"unparseable upstream answer: {exc}")


def timeout(timeout_s: float, what: str = "answer") -> UpstreamError:
    return UpstreamError(504, "timeout", f"upstream did not {what} within {timeout_s}s")
