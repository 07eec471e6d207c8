"""Recognises a handwritten digit (an 8x8 image, pixels 0..16) with the ONNX
model that train.py wrote.

    {"pixels": [64 numbers]}             -> {"digit": 3, "probabilities": [10 numbers]}
    {"instances": [[64 numbers], ...]}   -> {"predictions": [{"digit": ..., "probabilities": [...]}, ...]}
"""

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort

import sedge

PIXELS = 64
MAX_PIXEL = 16
MAX_INSTANCES = 1000


def open_session():
    options = ort.SessionOptions()
    # sedge scales by adding workers; one thread each keeps several workers
    # on a small device from fighting over its cores.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    path = Path(__file__).resolve().parent / "model.onnx"
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


# Loaded once, when the worker starts: every invocation reuses it.
SESSION = open_session()


class BadInput(ValueError):
    pass


def check_row(row, where):
    if not isinstance(row, list) or len(row) != PIXELS:
        raise BadInput(f"{where} must be a list of {PIXELS} numbers (an 8x8 image, row by row)")
    for i, value in enumerate(row):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadInput(f"{where}[{i}] is {json.dumps(value)}, not a number")
        if not 0 <= value <= MAX_PIXEL:
            raise BadInput(f"{where}[{i}] is {value}, outside 0..{MAX_PIXEL}")
    return row


def read_rows(req):
    """The images of a request as a float32 array, and whether it was a batch."""
    try:
        data = req.json()
    except ValueError:
        raise BadInput('the body must be JSON like {"pixels": [64 numbers from 0 to 16]}') from None
    if isinstance(data, dict) and "pixels" in data:
        return np.array([check_row(data["pixels"], "pixels")], dtype=np.float32), False
    if isinstance(data, dict) and "instances" in data:
        instances = data["instances"]
        if not isinstance(instances, list) or not 1 <= len(instances) <= MAX_INSTANCES:
            raise BadInput(f"instances must be a list of 1 to {MAX_INSTANCES} images")
        rows = [check_row(row, f"instances[{i}]") for i, row in enumerate(instances)]
        return np.array(rows, dtype=np.float32), True
    raise BadInput('the body must be a JSON object with "pixels" (64 numbers from 0 to 16) or "instances"')


def handle(req):
    try:
        rows, batch = read_rows(req)
    except BadInput as e:
        return sedge.Response({"error": str(e)}, status=400)
    labels, probabilities = SESSION.run(["label", "probabilities"], {"pixels": rows})
    predictions = [
        {"digit": int(label), "probabilities": [round(float(p), 6) for p in probs]}
        for label, probs in zip(labels, probabilities)
    ]
    return {"predictions": predictions} if batch else predictions[0]
