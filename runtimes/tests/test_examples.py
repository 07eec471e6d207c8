"""The example functions under examples/functions, served by the real shims."""

import importlib.util
import json
import os
import sys
import unittest

from test_shims import NODE_SHIM, PYTHON_SHIM, REPO, Worker

EXAMPLES = REPO / "examples" / "functions"
HAS_ONNXRUNTIME = all(importlib.util.find_spec(m) for m in ("numpy", "onnxruntime"))


class ExampleTests(unittest.TestCase):
    def serve(self, name, command):
        folder = EXAMPLES / name
        worker = Worker([*command, str(folder), "handler.handle"], folder, dict(os.environ, SEDGE_FUNCTION=name))
        self.addCleanup(worker.kill)
        self.assertEqual(worker.frame()[0]["type"], "ready", worker.stderr())
        return worker

    def check_hello(self, worker):
        header, body = worker.call("/", method="POST", body=b'{"name": "Ada"}')
        self.assertEqual(json.loads(body), {"message": "Hello, Ada!"})
        header, body = worker.call("/")
        self.assertEqual((header["status"], body), (200, b"Hello from sedge!"))

    def test_hello_python(self):
        self.check_hello(self.serve("hello-python", [sys.executable, "-u", str(PYTHON_SHIM)]))

    def test_hello_node(self):
        self.check_hello(self.serve("hello-node", ["node", str(NODE_SHIM)]))

    @unittest.skipUnless(HAS_ONNXRUNTIME, "numpy and onnxruntime are not installed (pip install -r requirements.txt)")
    def test_digits_python(self):
        worker = self.serve("digits-python", [sys.executable, "-u", str(PYTHON_SHIM)])
        sample = (EXAMPLES / "digits-python" / "sample.json").read_bytes()
        header, body = worker.call("/", method="POST", body=sample)
        answer = json.loads(body)
        self.assertEqual(header["status"], 200, body)
        self.assertEqual(answer["digit"], 2)  # the sample's true label
        self.assertEqual(len(answer["probabilities"]), 10)
        self.assertAlmostEqual(sum(answer["probabilities"]), 1.0, places=4)

        pixels = json.loads(sample)["pixels"]
        header, body = worker.call("/", method="POST", body=json.dumps({"instances": [pixels, pixels]}).encode())
        self.assertEqual([p["digit"] for p in json.loads(body)["predictions"]], [2, 2])

        for bad in (b"", b'{"pixels": [1, 2, 3]}', json.dumps({"pixels": ["x"] * 64}).encode()):
            with self.subTest(body=bad[:30]):
                header, body = worker.call("/", method="POST", body=bad)
                self.assertEqual(header["status"], 400)
                self.assertIn("error", json.loads(body))


if __name__ == "__main__":
    unittest.main()
