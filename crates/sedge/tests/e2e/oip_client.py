"""Talks to a sedge node with tritonclient's HTTP client, the reference
client of the Open Inference Protocol, and prints what it saw as one JSON
object for the end-to-end test to check.

    python oip_client.py digits URL MODEL SAMPLE_JSON [TOKEN]
    python oip_client.py effnet URL MODEL ONNX_FILE
    python oip_client.py other URL NAME

Every result comes from the node: nothing here decides what is right.
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def failure(call):
    """The exception's message and status when `call` raises, else None."""
    try:
        call()
    except InferenceServerException as e:
        return {"message": e.message(), "status": e.status()}
    return None


def infer(client, model, batch, binary_in, outputs, headers=None, version=""):
    tensor = httpclient.InferInput("pixels", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary_in)
    asked = None
    if outputs is not None:
        asked = [httpclient.InferRequestedOutput(name, binary_data=binary) for name, binary in outputs]
    # A copy: tritonclient writes Inference-Header-Content-Length into the
    # dict it is given, which would then go with the next request too.
    headers = dict(headers) if headers else None
    result = client.infer(model, [tensor], model_version=version, outputs=asked, headers=headers)
    answer = result.get_response()
    seen = {}
    for out in answer["outputs"]:
        array = result.as_numpy(out["name"])
        seen[out["name"]] = {
            "shape": list(array.shape),
            "data": array.tolist(),
            "binary": "binary_data_size" in out.get("parameters", {}),
        }
    return {"model_name": answer.get("model_name"), "outputs": seen}


def digits(client, model, sample, token):
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with open(sample) as f:
        row = np.array(json.load(f)["pixels"], dtype=np.float32)
    # Two rows: the sample and its mirror image.
    batch = np.stack([row, row[::-1].copy()])
    report = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "server": client.get_server_metadata(),
        "model_ready": client.is_model_ready(model, headers=headers),
        "version_ready": client.is_model_ready(model, "1", headers=headers),
        "metadata": client.get_model_metadata(model, headers=headers),
        "version_metadata": client.get_model_metadata(model, "1", headers=headers),
        "json": infer(client, model, batch, False, [("label", False), ("probabilities", False)], headers),
        "binary": infer(client, model, batch, True, [("label", True), ("probabilities", True)], headers),
        "default": infer(client, model, batch, True, None, headers, version="1"),
        "mixed": infer(client, model, batch, False, [("probabilities", True)], headers),
        "wrong_shape": failure(lambda: infer(client, model, batch[:, :10].copy(), True, None, headers)),
        "wrong_version": failure(lambda: client.get_model_metadata(model, "2", headers=headers)),
        "missing_ready": client.is_model_ready("no-such-model"),
        "missing_metadata": failure(lambda: client.get_model_metadata("no-such-model")),
    }
    if token:
        report["ready_without_token"] = client.is_model_ready(model)
        report["infer_without_token"] = failure(lambda: infer(client, model, batch, True, None))
    return report


def effnet(client, model, onnx_file):
    import onnxruntime

    meta = client.get_model_metadata(model)
    spec = meta["inputs"][0]
    shape = [1 if d < 0 else d for d in spec["shape"]]
    picture = np.random.default_rng(7).uniform(-1.0, 1.0, size=shape).astype(np.float32)
    tensor = httpclient.InferInput(spec["name"], shape, "FP32")
    tensor.set_data_from_numpy(picture, binary_data=True)
    result = client.infer(model, [tensor])
    name = meta["outputs"][0]["name"]
    served = result.as_numpy(name)
    # The same picture through this machine's own ONNX Runtime, in-process.
    local = onnxruntime.InferenceSession(onnx_file).run([name], {spec["name"]: picture})[0]
    return {
        "model_ready": client.is_model_ready(model),
        "metadata": meta,
        "shape": list(served.shape),
        "best": int(np.argmax(served)),
        "local_best": int(np.argmax(local)),
        "largest_difference": float(np.max(np.abs(served - local))),
    }


def other(client, name):
    return {
        "model_ready": client.is_model_ready(name),
        "metadata": failure(lambda: client.get_model_metadata(name)),
    }


def main():
    mode, url, name, *rest = sys.argv[1:]
    client = httpclient.InferenceServerClient(url=url)
    if mode == "digits":
        report = digits(client, name, rest[0], rest[1] if len(rest) > 1 else None)
    elif mode == "effnet":
        report = effnet(client, name, rest[0])
    else:
        report = other(client, name)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
