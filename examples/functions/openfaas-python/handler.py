import json
import os

import numpy as np
import onnxruntime as ort

# Loaded once when the function starts; every request reuses it.
MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.onnx")
session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])


def handle(event, context):
    try:
        pixels = json.loads(event.body)["pixels"]
        image = np.array(pixels, dtype=np.float32).reshape(1, 64)
    except (ValueError, KeyError, TypeError) as e:
        return {
            "statusCode": 400,
            "body": {"error": f'expected {{"pixels": [64 numbers from 0 to 16]}}: {e}'},
        }

    label, probabilities = session.run(["label", "probabilities"], {"pixels": image})
    return {
        "statusCode": 200,
        "body": {
            "digit": int(label[0]),
            "probabilities": [round(float(p), 6) for p in probabilities[0]],
        },
    }
