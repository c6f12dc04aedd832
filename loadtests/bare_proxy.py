"""A bare byte-pipe proxy: the floor any Python proxy on uvloop pays per request.

Each client connection gets its own upstream connection and bytes are copied both
ways, unparsed: no HTTP, no decisions. `bench_proxy` measures it in the same run as
the sidecar, so the sidecar's CPU per request reads against what this machine charges
for the two sockets and two wake-ups every proxy has, at that moment.

    python -m loadtests.bare_proxy --upstream http://127.0.0.1:9100 --port 9200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from urllib.parse import urlsplit

import uvloop

from loadtests.listen import add_listen_args, listening_socket


class _Upstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self._client = client

    def data_received(self, data: bytes) -> None:
        self._client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._client.close()


class _Client(asyncio.Protocol):
    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._transport: asyncio.Transport | None = None
        self._upstream: asyncio.Transport | None = None
        self._pending: list[bytes] = []
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self._transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        assert self._transport is not None
        client = self._transport
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_connection(
                lambda: _Upstream(client), self._host, self._port
            )
        except OSError:
            client.close()
            return
        if self._closed:
            upstream.close()
            return
        self._upstream = upstream  # type: ignore[assignment]
        for data in self._pending:
            upstream.write(data)
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        if self._upstream is None:
            self._pending.append(data)
        else:
            self._upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._upstream is not None:
            self._upstream.close()


async def serve(sock: socket.socket, upstream: str) -> None:
    parts = urlsplit(upstream)
    if parts.scheme != "http" or not parts.hostname or not parts.port:
        raise SystemExit(f"--upstream {upstream!r}: expected http://host:port")
    host, port = parts.hostname, parts.port
    loop = asyncio.get_running_loop()
    sock.listen(1024)
    server = await loop.create_server(lambda: _Client(host, port), sock=sock)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bare_proxy", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--upstream", required=True, help="http://host:port to pipe to")
    add_listen_args(parser, default_port=0)
    args = parser.parse_args(argv)
    sock, url = listening_socket(args)
    print(f"bare proxy: {url} -> {args.upstream}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(sock, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
