"""The ready frame says where a worker's start went: importing the
function's module, and loading onnxruntime sessions while it did."""

import os
import tempfile
import textwrap
import unittest
from pathlib import Path

from test_shims import PYTHON_SHIM, Worker

ROOT = Path(__file__).resolve().parents[2]
DIGITS_MODEL = ROOT / "examples" / "functions" / "digits-python" / "model.onnx"


class ReadyPhases(unittest.TestCase):
    def start(self, code):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        Path(tmp.name, "handler.py").write_text(textwrap.dedent(code))
        worker = Worker([os.environ.get("SEDGE_PYTHON", "python3"), str(PYTHON_SHIM), tmp.name, "handler.handle"],
                        cwd=tmp.name, env=dict(os.environ))
        self.addCleanup(worker.kill)
        return worker.frame()[0]

    def test_a_slow_import_is_counted_as_imports(self):
        ready = self.start("import time\ntime.sleep(0.05)\ndef handle(req):\n    return 'ok'\n")
        self.assertEqual(ready["type"], "ready")
        self.assertGreaterEqual(ready["imports_us"], 50_000)
        self.assertLess(ready["model_us"], 10_000)

    @unittest.skipUnless(DIGITS_MODEL.exists(), "the digits model is not here")
    def test_an_onnxruntime_session_built_at_import_is_counted_as_model(self):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            self.skipTest("onnxruntime is not installed")
        ready = self.start(f"""
            import time
            import onnxruntime
            time.sleep(0.02)
            session = onnxruntime.InferenceSession({str(DIGITS_MODEL)!r}, providers=["CPUExecutionProvider"])
            def handle(req):
                return 'ok'
            """)
        self.assertGreater(ready["model_us"], 0)
        self.assertGreaterEqual(ready["imports_us"], 20_000)


class SparePreload(unittest.TestCase):
    """A spare started with SEDGE_PRELOAD imports those modules before it
    says it is up, so the function's own import finds them loaded."""

    def spare_sees(self, preload):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        Path(tmp.name, "handler.py").write_text("import sys\nPRELOADED = 'colorsys' in sys.modules\n"
                                                "def handle(req):\n    return str(PRELOADED)\n")
        env = dict(os.environ)
        if preload:
            env["SEDGE_PRELOAD"] = preload
        worker = Worker([os.environ.get("SEDGE_PYTHON", "python3"), str(PYTHON_SHIM), "--spare"], cwd="/", env=env)
        self.addCleanup(worker.kill)
        self.assertEqual(worker.frame()[0], {"type": "spare"})
        worker.send({"type": "load", "dir": tmp.name, "handler": "handler.handle", "env": {}})
        self.assertEqual(worker.frame()[0]["type"], "ready")
        header, body = worker.call("/")
        return body.decode()

    def test_named_modules_are_loaded_before_the_function(self):
        self.assertEqual(self.spare_sees("colorsys,no_such_module_here"), "True")
        self.assertEqual(self.spare_sees(""), "False")


if __name__ == "__main__":
    unittest.main()
