"""Spare workers: a shim started with `--spare` waits, already warm, for a
`load` frame naming the function it becomes, then serves like any worker."""

import importlib.util
import json
import os
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

from test_shims import NODE_SHIM, PYTHON_SHIM, Worker

PY_HANDLER = """
import os

def handle(req):
    return {"greeting": os.environ.get("GREETING"), "cwd": os.getcwd(), "function": os.environ.get("SEDGE_FUNCTION")}
"""

NODE_HANDLER = """
exports.handle = () => ({ greeting: process.env.GREETING, cwd: process.cwd(), function: process.env.SEDGE_FUNCTION });
"""


class SpareContract:
    """Run against both shims: COMMAND starts a spare, FILE/CODE make the function."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name).resolve()
        (self.dir / self.FILE).write_text(textwrap.dedent(self.CODE))
        self.worker = Worker(self.COMMAND, cwd="/", env=dict(os.environ))

    def tearDown(self):
        self.worker.kill()
        self.tmp.cleanup()

    def load(self, handler="handler.handle", env=None):
        header, _ = self.worker.frame()
        self.assertEqual(header, {"type": "spare"})
        env = {"GREETING": "hi", "SEDGE_FUNCTION": "fn"} if env is None else env
        self.worker.send({"type": "load", "dir": str(self.dir), "handler": handler, "env": env})
        return self.worker.frame()[0]

    def test_becomes_the_function_it_is_given(self):
        self.assertEqual(self.load()["type"], "ready")
        header, body = self.worker.call("/")
        self.assertEqual(header["status"], 200)
        self.assertEqual(json.loads(body), {"greeting": "hi", "cwd": str(self.dir), "function": "fn"})

    def test_takes_its_function_s_name_as_its_process_title(self):
        pid = self.worker.proc.pid
        self.assertEqual(self.load(env={"SEDGE_FUNCTION": "a-function-with-a-long-name"})["type"], "ready")
        # The short name holds 15 bytes; the kernel cuts it there.
        self.assertEqual(Path(f"/proc/{pid}/comm").read_text().strip(), "a-function-with")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if self.rewrites_cmdline():
            self.assertTrue(cmdline.startswith(b"sedge-fn a-function-with-a-long-name"), cmdline)

    def test_max_answer_comes_with_the_load_frame(self):
        self.assertEqual(self.load(env={"SEDGE_MAX_ANSWER": "5"})["type"], "ready")
        header, body = self.worker.call("/")
        self.assertEqual(header["type"], "error", header)
        self.assertRegex(header["error"], r"^answer of \d+ bytes is over the function's max_answer of 5 bytes$")

    def test_a_module_that_does_not_load_is_reported(self):
        header = self.load(handler="missing.handle")
        self.assertEqual(header["type"], "load_error")
        self.assertEqual(self.worker.wait(), 1)

    def test_anything_but_a_load_frame_first_exits_two(self):
        self.worker.frame()
        self.worker.invoke(1, "/")
        self.assertEqual(self.worker.wait(), 2)

    def test_closed_input_before_assignment_exits_zero(self):
        self.worker.frame()
        self.worker.end_channel()
        self.assertEqual(self.worker.wait(), 0)


class PythonSpareTests(SpareContract, unittest.TestCase):
    COMMAND = [sys.executable, "-u", str(PYTHON_SHIM), "--spare"]
    FILE = "handler.py"
    CODE = PY_HANDLER

    @staticmethod
    def rewrites_cmdline():
        """Only with setproctitle, which this interpreter may lack."""
        return importlib.util.find_spec("setproctitle") is not None


class NodeSpareTests(SpareContract, unittest.TestCase):
    COMMAND = ["node", str(NODE_SHIM), "--spare"]
    FILE = "handler.js"
    CODE = NODE_HANDLER

    @staticmethod
    def rewrites_cmdline():
        return True


if __name__ == "__main__":
    unittest.main()
