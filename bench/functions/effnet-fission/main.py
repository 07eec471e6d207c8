import json
import os

import numpy as np
import onnxruntime as ort
from flask import request

_options = ort.SessionOptions()
_options.intra_op_num_threads = 1
_session = ort.InferenceSession(
    os.path.join(os.path.dirname(__file__), "efficientnet-lite0.onnx"), _options, providers=["CPUExecutionProvider"]
)


def main():
    x = np.frombuffer(request.get_data(), dtype=np.float32).reshape(1, 3, 224, 224)
    (logits,) = _session.run(None, {"input": x})
    return json.dumps({"class": int(np.argmax(logits[0]))})
