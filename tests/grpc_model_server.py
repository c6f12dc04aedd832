"""A real gRPC model server for the tests: the demo ONNX model behind Triton's service definition.

grpcio's server with the servicer that tritonclient ships (Triton's
`inference.GRPCInferenceService`, a superset of KServe's), onnxruntime over the
bundled model. Test hooks are request metadata: `x-test-sleep` (seconds before
answering), `x-test-status` (a status code name to fail with, details
`x-test-details`); every call's metadata is echoed back as `x-echo-<key>`
initial metadata and a `x-trailer` trailer. What it received (raw bytes and
metadata per call) and which calls were cancelled are kept for assertions.
A generic `/test.Echo/*` service covers the four call shapes with raw bytes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from sidecar.demo.model import META_PATH, MODEL_PATH, OnnxClassifier, load_meta


@dataclass
class Seen:
    method: str
    metadata: dict[str, Any]
    raw: bytes = b""
    # Seconds the call had left when it arrived (None: no deadline).
    time_remaining: float | None = None


@dataclass
class Recorder:
    calls: list[Seen] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    def last(self, method: str) -> Seen:
        return next(s for s in reversed(self.calls) if s.method == method)


def _hooks(context: grpc.ServicerContext, recorder: Recorder, method: str, raw: bytes) -> None:
    md = {k: v for k, v in context.invocation_metadata()}
    left = context.time_remaining()
    # grpcio's sync server reports "no deadline" as centuries.
    recorder.calls.append(Seen(method, md, raw, left if left is not None and left < 1e8 else None))
    context.send_initial_metadata(
        [(f"x-echo-{k}", v) for k, v in md.items() if k.startswith("x-") and not k.endswith("-bin")]
    )
    context.set_trailing_metadata([("x-trailer", "t")])
    sleep = md.get("x-test-sleep")
    if sleep:
        deadline = time.monotonic() + float(sleep)
        while time.monotonic() < deadline:
            if not context.is_active():
                recorder.cancelled.append(method)
                return
            time.sleep(0.01)
    status = md.get("x-test-status")
    if status:
        context.abort(grpc.StatusCode[str(status)], str(md.get("x-test-details", "")))


class ModelServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, recorder: Recorder) -> None:
        self.meta = load_meta(META_PATH)
        self.model = OnnxClassifier(MODEL_PATH, self.meta)
        self.recorder = recorder

    def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request: Any, context: Any) -> Any:
        _hooks(context, self.recorder, "ModelReady", request.SerializeToString())
        return pb.ModelReadyResponse(ready=request.name == self.meta.name)

    def ModelMetadata(self, request: Any, context: Any) -> Any:
        width, classes = len(self.meta.feature_names), len(self.meta.class_labels)
        return pb.ModelMetadataResponse(
            name=self.meta.name,
            versions=[self.meta.version],
            platform="onnxruntime_onnx",
            inputs=[{"name": self.meta.input_name, "datatype": "FP32", "shape": [-1, width]}],
            outputs=[
                {"name": "label", "datatype": "INT64", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
            ],
        )

    def _infer(self, request: Any) -> Any:
        (tensor,) = request.inputs
        shape = list(tensor.shape)
        if request.raw_input_contents:
            x = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(shape)
        else:
            x = np.array(tensor.contents.fp32_contents, dtype=np.float32).reshape(shape)
        label, proba = self.model.predict(x)
        wanted = [o.name for o in request.outputs] or ["label", "probabilities"]
        out = pb.ModelInferResponse(
            model_name=request.model_name, model_version=self.meta.version, id=request.id
        )
        raw = bool(request.raw_input_contents)
        for name, value, dtype in (("label", label, "INT64"), ("probabilities", proba, "FP32")):
            if name not in wanted:
                continue
            t = out.outputs.add(name=name, datatype=dtype, shape=list(value.shape))
            if raw:
                out.raw_output_contents.append(
                    value.astype(value.dtype.newbyteorder("<")).tobytes()
                )
            elif dtype == "INT64":
                t.contents.int64_contents.extend(value.ravel().tolist())
            else:
                t.contents.fp32_contents.extend(value.ravel().tolist())
        return out

    def ModelInfer(self, request: Any, context: Any) -> Any:
        _hooks(context, self.recorder, "ModelInfer", request.SerializeToString())
        if not context.is_active():
            return pb.ModelInferResponse()
        return self._infer(request)

    def ModelStreamInfer(self, requests: Any, context: Any) -> Iterator[Any]:
        _hooks(context, self.recorder, "ModelStreamInfer", b"")
        for request in requests:
            self.recorder.calls.append(
                Seen("ModelStreamInfer.message", {}, request.SerializeToString())
            )
            yield pb.ModelStreamInferResponse(infer_response=self._infer(request))


def _echo_handlers(recorder: Recorder) -> grpc.GenericRpcHandler:
    def unary(request: bytes, context: Any) -> bytes:
        _hooks(context, recorder, "Unary", request)
        return request[::-1]

    def server_stream(request: bytes, context: Any) -> Iterator[bytes]:
        _hooks(context, recorder, "ServerStream", request)
        for i in range(3):
            yield request + str(i).encode()

    def client_stream(requests: Iterator[bytes], context: Any) -> bytes:
        _hooks(context, recorder, "ClientStream", b"")
        return b"|".join(requests)

    def bidi(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        # The first message is read before the hooks run: a server that fails a stream
        # before reading anything meets the limit the README names (INTERNAL, not its status).
        first = next(requests, None)
        _hooks(context, recorder, "Bidi", b"")
        for r in [first] if first is not None else []:
            yield r.upper()
        for r in requests:
            yield r.upper()

    return grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        },
    )


@dataclass
class RunningModelServer:
    address: str
    recorder: Recorder

    @property
    def url(self) -> str:
        return f"http://{self.address}"


@contextlib.contextmanager
def grpc_model_server(
    max_message_bytes: int = 64 * 1024 * 1024, tls: tuple[bytes, bytes] | None = None
) -> Iterator[RunningModelServer]:
    """The server on a free port; `tls` = (private key PEM, certificate chain PEM) serves TLS."""
    recorder = Recorder()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="grpc-model"),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(ModelServicer(recorder), server)
    server.add_generic_rpc_handlers((_echo_handlers(recorder),))
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([tls]))
    server.start()
    try:
        yield RunningModelServer(f"127.0.0.1:{port}", recorder)
    finally:
        server.stop(None).wait(5)
