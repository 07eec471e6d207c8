"""Trains the digits model and writes model.onnx and sample.json beside this file.

    pip install -r requirements-train.txt   # from the repository root
    python3 train.py

The data set is scikit-learn's 8x8 handwritten digits (1797 images, pixel
values 0..16). The model is a small scaled MLP: a few tens of KB as ONNX and
well under a millisecond per image in onnxruntime on one thread, which suits
a worker on a small edge device. Fixed seeds make every run produce the
same model.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
SEED = 0


def main():
    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=SEED)

    model = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3, max_iter=500, random_state=SEED),
    )
    model.fit(x_train, y_train)

    # No ZipMap: the outputs stay plain tensors, `label` (int64) and
    # `probabilities` (float32), instead of a list of dicts.
    onnx_model = to_onnx(
        model,
        initial_types=[("pixels", FloatTensorType([None, 64]))],
        options={"zipmap": False},
    )
    path = HERE / "model.onnx"
    path.write_bytes(onnx_model.SerializeToString())

    # Score the exported file, not the scikit-learn object: this is what the
    # function will run.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(["label", "probabilities"], {"pixels": x_test})
    accuracy = float(np.mean(labels == y_test))
    agreement = float(np.mean(labels == model.predict(x_test)))
    print(f"test accuracy (onnxruntime): {accuracy:.4f} on {len(y_test)} images")
    print(f"agreement with scikit-learn: {agreement:.4f}")
    print(f"wrote {path.name}: {path.stat().st_size} bytes")

    sample = x_test[0]
    (HERE / "sample.json").write_text(json.dumps({"pixels": [int(v) for v in sample]}) + "\n")
    print(f"wrote sample.json: a {y_test[0]} (model says {labels[0]}, p={probabilities[0][labels[0]]:.3f})")


if __name__ == "__main__":
    main()
