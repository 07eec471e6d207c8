import os

import numpy as np
import onnxruntime as ort

# Loaded once when the runtime imports the function; every call reuses it.
MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.onnx")
session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])


def handler(event, context):
    # event['data'] is the parsed body when it was sent as application/json.
    pixels = event['data']['pixels']
    image = np.array(pixels, dtype=np.float32).reshape(1, 64)
    label, probabilities = session.run(["label", "probabilities"], {"pixels": image})
    return {
        "digit": int(label[0]),
        "probabilities": [round(float(p), 6) for p in probabilities[0]],
    }
