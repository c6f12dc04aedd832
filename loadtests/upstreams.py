"""Benchmark upstreams: a fixed-response V2 server that costs next to nothing per request.

A raw asyncio Protocol on uvloop with httptools' parser, not an ASGI app: the point of the
fast scenario is to show the sidecar's own cost, so the upstream must be the cheapest
HTTP/1.1 server Python can be (keep-alive, pipelining-safe, any method and path).

    python -m loadtests.upstreams --port 9100 [--fd N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from typing import cast

import httptools
import orjson
import uvloop

from loadtests.listen import add_listen_args, listening_socket

# One row of the demo model's V2 answer: the sidecar parses it like the real thing.
FAST_RESPONSE_BODY = orjson.dumps(
    {
        "model_name": "credit",
        "model_version": "1",
        "id": "fast",
        "outputs": [
            {"name": "label", "shape": [1], "datatype": "INT64", "data": [0]},
            {"name": "probabilities", "shape": [1, 2], "datatype": "FP32", "data": [0.8, 0.2]},
        ],
    }
)
_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(FAST_RESPONSE_BODY)).encode()
    + b"\r\n\r\n"
    + FAST_RESPONSE_BODY
)
_CLOSE_RESPONSE = _RESPONSE.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)


class FixedResponseProtocol(asyncio.Protocol):
    """Answers every complete request with the same bytes; the body is read and dropped."""

    __slots__ = ("_parser", "_transport")

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self._transport = cast(asyncio.Transport, transport)
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                self._transport.close()

    def on_message_complete(self) -> None:
        if self._transport is None:
            return
        if self._parser.should_keep_alive():
            self._transport.write(_RESPONSE)
        else:
            self._transport.write(_CLOSE_RESPONSE)
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve_fixed(sock: socket.socket) -> None:
    """Serve the fixed response on a bound socket until cancelled."""
    loop = asyncio.get_running_loop()
    sock.listen(1024)
    server = await loop.create_server(FixedResponseProtocol, sock=sock)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.upstreams", description=__doc__.splitlines()[0]
    )
    add_listen_args(parser, default_port=9100)
    args = parser.parse_args(argv)
    sock, url = listening_socket(args)
    print(f"fast upstream: {url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve_fixed(sock))
    return 0


if __name__ == "__main__":
    sys.exit(main())
