from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest

from sidecar.demo.data import generate
from sidecar.demo.model import MODEL_PATH, ModelMeta, load_meta
from sidecar.demo.process import ModelServerProcess


@pytest.fixture(scope="session")
def meta() -> ModelMeta:
    return load_meta()


@pytest.fixture(scope="session")
def model_server() -> Iterator[str]:
    """The demo model server as its own process on a free port; yields its base URL."""
    with ModelServerProcess() as server:
        yield server.url


@pytest.fixture(scope="session")
def rows() -> npt.NDArray[np.float32]:
    """Demo rows, some with missing values (NaN), as the model's float32 input."""
    x = generate(40, seed=123).features
    assert np.isnan(x).any(), "the sample must exercise missing values"
    return x


@pytest.fixture(scope="session")
def reference() -> ort.InferenceSession:
    """onnxruntime on the same file, called directly: what every protocol must agree with."""
    return ort.InferenceSession(str(MODEL_PATH), providers=["CPUExecutionProvider"])
