"""The demo model server: onnxruntime behind a raw ASGI app, speaking V2, KServe V1 and MLflow.

Raw ASGI under uvicorn (httptools, uvloop) rather than a framework: routing is a few
string checks and the server should cost little next to the sidecar it stands behind.
Inference runs on the event loop: a tree walk over a handful of rows takes tens of
microseconds, less than a hop to an executor.

    python -m sidecar.demo.model_server --port 9000
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import uvicorn

from sidecar.demo.codecs import (
    InputError,
    Matrix,
    decode_mlflow,
    decode_v1,
    decode_v2,
    encode_predictions,
    encode_v2,
)
from sidecar.demo.model import META_PATH, MODEL_PATH, OUTPUT_NAMES, OnnxClassifier, load_meta
from sidecar.types import Receive, Scope, Send

log = logging.getLogger("sidecar.demo.model_server")

MAX_BODY_BYTES = 16 * 1024 * 1024
_JSON_HEADERS = [(b"content-type", b"application/json")]


class ModelServerApp:
    """ASGI app serving one classifier under `/v2/models/{name}`, `/v1/models/{name}`, `/invocations`."""

    def __init__(self, model: OnnxClassifier, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.model = model
        self._max_body = max_body_bytes
        meta = model.meta
        name, version = meta.name, meta.version
        v2 = f"/v2/models/{name}"
        self._v2_prefix = v2
        self._v1_predict = f"/v1/models/{name}:predict"
        v2_meta = _json(
            {
                "name": name,
                "versions": [version],
                "platform": "onnxruntime_onnx",
                "inputs": [
                    {
                        "name": meta.input_name,
                        "datatype": "FP32",
                        "shape": [-1, len(meta.feature_names)],
                    }
                ],
                "outputs": [
                    {"name": "label", "datatype": "INT64", "shape": [-1]},
                    {
                        "name": "probabilities",
                        "datatype": "FP32",
                        "shape": [-1, len(meta.class_labels)],
                    },
                ],
                "parameters": {
                    "feature_names": list(meta.feature_names),
                    "class_labels": list(meta.class_labels),
                },
            }
        )
        ready = _json({"name": name, "ready": True})
        # GET answers never change: render them once.
        self._get: dict[str, bytes] = {
            "/v2": _json({"name": "sidecar-demo-model-server", "version": "1", "extensions": []}),
            "/v2/health/live": _json({"live": True}),
            "/v2/health/ready": _json({"ready": True}),
            v2: v2_meta,
            f"{v2}/versions/{version}": v2_meta,
            f"{v2}/ready": ready,
            f"{v2}/versions/{version}/ready": ready,
            "/v1/models": _json({"models": [name]}),
            f"/v1/models/{name}": ready,
            "/ping": b"{}",
            "/health": b"{}",
        }
        self._post: dict[str, Callable[[Any], bytes]] = {
            f"{v2}/infer": self._infer_v2,
            f"{v2}/versions/{version}/infer": self._infer_v2,
            self._v1_predict: self._predict,
            "/invocations": self._invocations,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        path: str = scope["path"]
        try:
            if method == "POST" and path in self._post:
                body = await self._read_json(scope, receive)
                status, payload = 200, self._post[path](body)
            elif method in ("GET", "HEAD") and path in self._get:
                status, payload = 200, self._get[path]
            else:
                raise self._no_route(method, path)
        except InputError as exc:
            status, payload = exc.status, _json({"error": str(exc)})
        except Exception as exc:
            log.exception("inference failed on %s %s", method, path)
            status, payload = 500, _json({"error": f"internal error: {type(exc).__name__}"})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else payload})

    def _no_route(self, method: str, path: str) -> InputError:
        if path in self._post or path in self._get:
            return InputError(f"method {method} not allowed on {path}", 405)
        name = self.model.meta.name
        for prefix in ("/v2/models/", "/v1/models/"):
            if path.startswith(prefix):
                asked = path[len(prefix) :].split("/", 1)[0].split(":", 1)[0]
                if asked != name:
                    return InputError(f"model {asked!r} not found; this server has {name!r}", 404)
                if "/versions/" in path:
                    return InputError(
                        f"model {name!r} has no such version; it has {self.model.meta.version!r}",
                        404,
                    )
        return InputError(f"no route {method} {path}", 404)

    async def _read_json(self, scope: Scope, receive: Receive) -> Any:
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InputError("client went away", 400)
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise InputError(f"body larger than {self._max_body} bytes", 413)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if not body:
            raise InputError("empty body; expected JSON")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"body is not valid JSON: {exc}") from None

    def _run(self, x: Matrix) -> tuple[Any, Any]:
        return self.model.predict(x)

    def _infer_v2(self, body: Any) -> bytes:
        x, outputs, request_id = decode_v2(body, self.model.meta)
        label, proba = self._run(x)
        return encode_v2(self.model.meta, request_id, label, proba, outputs)

    def _predict(self, body: Any) -> bytes:
        label, proba = self._run(decode_v1(body, self.model.meta))
        return encode_predictions(self.model.meta, label, proba)

    def _invocations(self, body: Any) -> bytes:
        label, proba = self._run(decode_mlflow(body, self.model.meta))
        return encode_predictions(self.model.meta, label, proba)


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_model_server_app(
    model_path: str | Path = MODEL_PATH, meta_path: str | Path = META_PATH, threads: int = 1
) -> ModelServerApp:
    """The ASGI app for a model file and its `model.json` (defaults: the bundled demo model)."""
    meta = load_meta(meta_path)
    return ModelServerApp(OnnxClassifier(model_path, meta, threads=threads))


def uvicorn_server(app: ModelServerApp, log_level: str = "warning") -> uvicorn.Server:
    """A uvicorn server for `app` on the fast path (httptools, uvloop), without access logs."""
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level=log_level,
        server_header=False,
        date_header=False,
    )
    return uvicorn.Server(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.demo.model_server", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0 picks a free port (printed)")
    parser.add_argument("--fd", type=int, help="serve on this inherited listening socket instead")
    parser.add_argument("--model", type=Path, default=MODEL_PATH, help="ONNX classifier")
    parser.add_argument("--meta", type=Path, default=META_PATH, help="its model.json")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args(argv)
    try:
        app = create_model_server_app(args.model, args.meta, threads=args.threads)
    except Exception as exc:  # onnxruntime raises its own types for a bad file
        print(f"model server: cannot load model: {exc}", file=sys.stderr)
        return 2
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
    else:
        sock = socket.create_server((args.host, args.port), backlog=1024)
    host, port = sock.getsockname()[:2]
    meta = app.model.meta
    print(
        f"model server: http://{host}:{port} model={meta.name} version={meta.version} "
        f"outputs={list(OUTPUT_NAMES)}",
        flush=True,
    )
    server = uvicorn_server(app)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
