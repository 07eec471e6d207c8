import os

import numpy as np
import onnxruntime as ort
from flask import request

# Loaded once when the environment loads the function; every request reuses it.
MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.onnx")
session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])


def main():
    data = request.get_json(silent=True)
    pixels = data.get("pixels") if isinstance(data, dict) else None
    if not isinstance(pixels, list) or len(pixels) != 64:
        return {"error": 'expected {"pixels": [64 numbers from 0 to 16]}'}, 400

    image = np.array([pixels], dtype=np.float32)
    label, probabilities = session.run(["label", "probabilities"], {"pixels": image})
    return {
        "digit": int(label[0]),
        "probabilities": [round(float(p), 6) for p in probabilities[0]],
    }
