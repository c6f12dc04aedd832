"""An MLServer custom runtime serving the demo's bundled ONNX credit model.

Loaded by MLServer itself (`implementation: runtime.CreditOnnx`), inside the
MLServer virtual environment that tests/mlserver.py builds: this file imports
only MLServer, numpy and onnxruntime, never the sidecar.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class CreditOnnx(MLModel):
    async def load(self) -> bool:
        uri = self.settings.parameters.uri if self.settings.parameters else None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(str(uri), options)
        self._input = self._session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        label, probabilities = self._session.run(None, {self._input: rows})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output("label", np.asarray(label)),
                NumpyCodec.encode_output("probabilities", np.asarray(probabilities)),
            ],
        )
