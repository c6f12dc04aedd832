"""A real Triton Inference Server (NVIDIA PyTriton's bundled tritonserver, CPU only) serving one model.

Run by tests/triton.py inside PyTriton's own virtual environment; imports only
numpy and pytriton, never the sidecar. Usage: server.py HTTP_PORT GRPC_PORT METRICS_PORT

The model: the row's values summed, p = sigmoid(sum / 100); outputs
`probabilities` [N, 2] FP32 and `label` [N, 1] INT64 (as tests/v2_binary_model.py).
"""

from __future__ import annotations

import sys

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


@batch
def infer(input: np.ndarray) -> dict[str, np.ndarray]:
    p = 1.0 / (1.0 + np.exp(-input.astype(np.float64).sum(axis=1) / 100.0))
    return {
        "probabilities": np.stack([1.0 - p, p], axis=1).astype(np.float32),
        "label": (p >= 0.5).astype(np.int64).reshape(-1, 1),
    }


def main() -> None:
    http_port, grpc_port, metrics_port = (int(a) for a in sys.argv[1:4])
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=http_port,
        grpc_address="127.0.0.1",
        grpc_port=grpc_port,
        metrics_port=metrics_port,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="credit",
            infer_func=infer,
            inputs=[Tensor(name="input", dtype=np.float32, shape=(-1,))],
            outputs=[
                Tensor(name="probabilities", dtype=np.float32, shape=(2,)),
                Tensor(name="label", dtype=np.int64, shape=(1,)),
            ],
            config=ModelConfig(max_batch_size=64),
        )
        triton.serve()


if __name__ == "__main__":
    main()
