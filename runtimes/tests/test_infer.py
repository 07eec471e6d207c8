"""sedge.infer in both shims against docs/protocol.md ("Models called from
functions"): the test plays sedge, answers the shim's infer frames itself
and checks what the handler got back.

Run from the repository root:  python3 -m unittest discover -s runtimes/tests -v
"""

import json
import struct
import sys
import unittest

from test_shims import NODE_SHIM, PYTHON_SHIM, ShimContract

FLOATS = struct.Struct("<3f")
OUTPUT = struct.pack("<2f", 0.25, 0.75)


class InferContract:
    """What both shims do for sedge.infer; a subclass gives the handler,
    which calls the model its path names with the FP32 tensor [[1, 2, 3]]
    (or, at /picture/NAME, with a picture's bytes) and answers what it got
    or the error it caught."""

    start = ShimContract.start
    start_ready = ShimContract.start_ready
    setUp = ShimContract.setUp

    def worker(self, concurrency="1"):
        return self.start_ready("calls", SEDGE_MODELS="digits,effnet", SEDGE_CONCURRENCY=concurrency)

    def infer_frame(self, worker, call):
        header, body = worker.frame()
        self.assertEqual(header["type"], "infer", header)
        self.assertEqual(header["call"], call, header)
        return header, body

    def answer(self, worker, infer_id):
        worker.send({"type": "infer_result", "id": infer_id,
                     "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "size": 8}]}, OUTPUT)

    def test_tensors_go_as_raw_bytes_and_come_back_as_arrays(self):
        worker = self.worker()
        worker.invoke(5, "/digits")
        header, body = self.infer_frame(worker, 5)
        self.assertEqual(header["model"], "digits")
        self.assertEqual(header["inputs"], [{"name": "", "datatype": "FP32", "shape": [1, 3], "size": 12}])
        self.assertEqual(FLOATS.unpack(body), (1.0, 2.0, 3.0))
        self.answer(worker, header["id"])
        answer, body = worker.frame()
        self.assertEqual(answer["type"], "response", answer)
        self.assertEqual(json.loads(body), {"values": [[0.25, 0.75]], "shape": [1, 2]})

    def test_a_picture_goes_whole_and_the_json_answer_comes_back_parsed(self):
        worker = self.worker()
        worker.invoke(1, "/picture/effnet")
        header, body = self.infer_frame(worker, 1)
        self.assertTrue(header["image"], header)
        self.assertEqual(body, b"\x89PNG not really")
        worker.send({"type": "infer_result", "id": header["id"], "outputs": [], "json": True},
                    b'[{"index": 282, "label": "tiger cat", "score": 0.5}]')
        _, body = worker.frame()
        self.assertEqual(json.loads(body), {"classes": [{"index": 282, "label": "tiger cat", "score": 0.5}]})

    def test_an_infer_error_is_raised_in_the_handler(self):
        worker = self.worker()
        worker.invoke(2, "/effnet")
        header, _ = self.infer_frame(worker, 2)
        worker.send({"type": "infer_error", "id": header["id"], "error": "model effnet is not deployed on this node"})
        _, body = worker.frame()
        self.assertEqual(json.loads(body), {"error": "InferError: model effnet is not deployed on this node"})

    def test_an_undeclared_model_is_refused_without_asking_sedge(self):
        worker = self.worker()
        header, body = worker.call("/mnist")
        self.assertEqual(header["type"], "response", header)
        self.assertEqual(json.loads(body),
                         {"error": "InferError: mnist is not in this function's models = [\"digits\", \"effnet\"]"})

    def test_concurrent_calls_get_their_own_answers(self):
        worker = self.worker(concurrency="2")
        worker.invoke(1, "/digits")
        worker.invoke(2, "/effnet")
        frames = [worker.frame()[0], worker.frame()[0]]
        by_call = {f["call"]: f for f in frames}
        self.assertEqual(sorted(by_call), [1, 2])
        self.assertEqual(by_call[2]["model"], "effnet")
        # Answered out of order: each invocation still gets its own.
        worker.send({"type": "infer_error", "id": by_call[2]["id"], "error": "late"})
        self.answer(worker, by_call[1]["id"])
        answers = {}
        for _ in range(2):
            header, body = worker.frame()
            answers[header["id"]] = json.loads(body)
        self.assertEqual(answers, {1: {"values": [[0.25, 0.75]], "shape": [1, 2]}, 2: {"error": "InferError: late"}})


class PythonInferTests(InferContract, unittest.TestCase):
    HANDLER_FILE = "handler.py"
    SOURCES = {
        "calls": """
            import sedge

            def handle(req):
                parts = req.path.strip("/").split("/")
                try:
                    if parts[0] == "picture":
                        return {"classes": sedge.infer(parts[1], b"\\x89PNG not really")}
                    out = sedge.infer(parts[0], [[1.0, 2.0, 3.0]])
                except sedge.InferError as e:
                    return {"error": f"{type(e).__name__}: {e}"}
                values = out.tolist() if hasattr(out, "tolist") else out
                shape = list(out.shape) if hasattr(out, "shape") else [len(values), len(values[0])]
                return {"values": values, "shape": shape}
        """,
    }

    def command(self, handler):
        return [sys.executable, "-u", str(PYTHON_SHIM), str(self.dir), handler]


class NodeInferTests(InferContract, unittest.TestCase):
    HANDLER_FILE = "handler.js"
    SOURCES = {
        "calls": """
            const sedge = require('sedge');

            exports.handle = async (req) => {
              const parts = req.path.slice(1).split('/');
              try {
                if (parts[0] === 'picture') {
                  return { classes: await sedge.infer(parts[1], Buffer.from('\\x89PNG not really', 'latin1')) };
                }
                const out = await sedge.infer(parts[0], { data: Float32Array.from([1, 2, 3]), shape: [1, 3] });
                return { values: [Array.from(out.data)], shape: out.shape };
              } catch (err) {
                return { error: `${err.name}: ${err.message}` };
              }
            };
        """,
    }

    def command(self, handler):
        return ["node", str(NODE_SHIM), str(self.dir), handler]


if __name__ == "__main__":
    unittest.main()
