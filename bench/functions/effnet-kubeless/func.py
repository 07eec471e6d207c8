import json
import os

import numpy as np
import onnxruntime as ort

_options = ort.SessionOptions()
_options.intra_op_num_threads = 1
_session = ort.InferenceSession(
    os.path.join(os.path.dirname(__file__), "efficientnet-lite0.onnx"), _options, providers=["CPUExecutionProvider"]
)


def handler(event, context):
    # A body that is not JSON arrives as it was sent.
    x = np.frombuffer(event["data"], dtype=np.float32).reshape(1, 3, 224, 224)
    (logits,) = _session.run(None, {"input": x})
    return json.dumps({"class": int(np.argmax(logits[0]))})
