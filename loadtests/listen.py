"""The listening socket of the benchmark's child servers: `--host/--port`, or `--fd` from a parent."""

from __future__ import annotations

import argparse
import socket


def add_listen_args(parser: argparse.ArgumentParser, default_port: int) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=default_port, help="0 picks a free port (printed)"
    )
    parser.add_argument("--fd", type=int, help="serve on this inherited listening socket instead")


def listening_socket(args: argparse.Namespace) -> tuple[socket.socket, str]:
    """The socket to serve on, and its http:// URL."""
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
    else:
        sock = socket.create_server((args.host, args.port))
    host, port = sock.getsockname()[:2]
    return sock, f"http://{host}:{port}"
