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


class PythonInferOneAtATimeTests(unittest.TestCase):
    """With one invocation at a time, the Python shim runs the handler on
    the thread that reads the channel and sedge.infer reads its own answer:
    what arrives meanwhile must be handled as the serving loop would."""

    HANDLER_FILE = "handler.py"
    SOURCES = {
        "calls": """
            import threading
            import sedge

            def ask(model):
                try:
                    out = sedge.infer(model, [[1.0, 2.0, 3.0]])
                except sedge.InferError as e:
                    return {"error": str(e)}
                return {"values": out.tolist() if hasattr(out, "tolist") else out}

            def handle(req):
                parts = req.path.strip("/").split("/")
                if parts[0] == "thread":
                    # A thread of the handler's own, while the handler's
                    # thread only waits for it.
                    got = {}
                    helper = threading.Thread(target=lambda: got.update(ask(parts[1])))
                    helper.start()
                    helper.join()
                    return got
                got = ask(parts[0])
                got["main"] = threading.current_thread() is threading.main_thread()
                got["threads"] = threading.active_count()
                return got
        """,
    }

    start = ShimContract.start
    start_ready = ShimContract.start_ready
    setUp = ShimContract.setUp
    command = PythonInferTests.command
    infer_frame = InferContract.infer_frame
    answer = InferContract.answer

    def worker(self):
        return self.start_ready("calls", SEDGE_MODELS="digits,effnet", SEDGE_CONCURRENCY="1")

    def test_the_answer_is_read_by_the_handlers_own_thread(self):
        worker = self.worker()
        for call in (1, 2):
            worker.invoke(call, "/digits")
            header, _ = self.infer_frame(worker, call)
            self.answer(worker, header["id"])
            answer, body = worker.frame()
            self.assertEqual(answer["id"], call, answer)
            self.assertEqual(json.loads(body), {"values": [[0.25, 0.75]], "main": True, "threads": 1})

    def test_an_infer_error_while_waiting_is_raised_and_the_worker_serves_on(self):
        worker = self.worker()
        worker.invoke(3, "/effnet")
        header, _ = self.infer_frame(worker, 3)
        worker.send({"type": "infer_error", "id": header["id"], "error": "the deadline of call 3 passed"})
        answer, body = worker.frame()
        self.assertEqual(answer["id"], 3, answer)
        self.assertEqual(json.loads(body)["error"], "the deadline of call 3 passed")
        worker.invoke(4, "/digits")
        header, _ = self.infer_frame(worker, 4)
        self.answer(worker, header["id"])
        answer, body = worker.frame()
        self.assertEqual((answer["id"], json.loads(body)["values"]), (4, [[0.25, 0.75]]))

    def test_an_invocation_arriving_while_one_waits_runs_after_it(self):
        # The client of call 1 hung up: sedge sends call 2 while call 1 still
        # waits for its model.
        worker = self.worker()
        worker.invoke(1, "/digits")
        first, _ = self.infer_frame(worker, 1)
        worker.invoke(2, "/digits")
        self.answer(worker, first["id"])
        answer, _ = worker.frame()
        self.assertEqual(answer["id"], 1, answer)
        second, _ = self.infer_frame(worker, 2)
        self.answer(worker, second["id"])
        answer, body = worker.frame()
        self.assertEqual(answer["id"], 2, answer)
        self.assertEqual(json.loads(body)["values"], [[0.25, 0.75]])

    def test_the_channel_ending_while_one_waits_fails_the_call_and_the_worker_exits(self):
        worker = self.worker()
        worker.invoke(1, "/digits")
        self.infer_frame(worker, 1)
        worker.end_channel()
        answer, body = worker.frame()
        self.assertEqual(answer["id"], 1, answer)
        self.assertEqual(json.loads(body)["error"], "sedge ended the channel before digits answered")
        self.assertEqual(worker.wait(), 0)

    def test_a_call_from_a_thread_of_the_handlers_own_reads_its_answer_itself(self):
        worker = self.worker()
        worker.invoke(6, "/thread/digits")
        header, _ = self.infer_frame(worker, 6)
        self.answer(worker, header["id"])
        answer, body = worker.frame()
        self.assertEqual(answer["id"], 6, answer)
        self.assertEqual(json.loads(body), {"values": [[0.25, 0.75]]})

    def test_an_answer_to_no_inference_ends_the_worker(self):
        worker = self.worker()
        worker.invoke(1, "/digits")
        self.infer_frame(worker, 1)
        worker.send({"type": "infer_result", "id": 99, "outputs": []})
        self.assertEqual(worker.wait(), 2)
        self.assertIn("inference 99, which is not waiting", worker.stderr())


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
