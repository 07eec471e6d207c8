import json

import numpy as np
import sedge


def handle(req):
    # The raw input tensor, run by the model the node serves: no model in this worker.
    x = np.frombuffer(req.body, dtype=np.float32).reshape(1, 3, 224, 224)
    logits = sedge.infer("effnet-onnx", x)
    return json.dumps({"class": int(np.argmax(logits[0]))})
