import os

import numpy as np
import onnxruntime as ort

# Loaded once when the module is imported; every task reuses it.
MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.onnx")
session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])


def classify_digit(pixels):
    """Classifies an 8x8 image of a handwritten digit: 64 pixel values from 0 to 16."""
    if len(pixels) != 64:
        raise ValueError(f"expected 64 pixel values, got {len(pixels)}")
    image = np.array([pixels], dtype=np.float32)
    label, probabilities = session.run(["label", "probabilities"], {"pixels": image})
    return {
        "digit": int(label[0]),
        "probabilities": [round(float(p), 6) for p in probabilities[0]],
    }
