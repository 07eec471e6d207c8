"""Copies an ONNX model with the first dimension of its inputs and outputs
made symbolic ("N"), so requests can be stacked into one run. Only right
for models whose graph keeps the batch axis apart (EfficientNet-Lite0
flattens on axis 1); the copy is checked by running batches of 1 and 3.

usage: dynamic_batch.py IN.onnx OUT.onnx
"""

import sys

import numpy as np
import onnx


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    model = onnx.load(argv[1])
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"
    # Shapes inferred for the fixed batch would contradict the new one.
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, argv[2])
    check(argv[2])
    return 0


def check(path):
    import onnxruntime

    session = onnxruntime.InferenceSession(path)
    feed = {}
    for i in session.get_inputs():
        shape = [3] + [d if isinstance(d, int) else 1 for d in i.shape[1:]]
        feed[i.name] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    batch = session.run(None, feed)[0]
    one = session.run(None, {k: v[1:2] for k, v in feed.items()})[0]
    if batch.shape[0] != 3 or not np.allclose(batch[1:2], one, atol=1e-4):
        raise SystemExit(f"{path}: a batch of 3 does not give each row's own answer")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
