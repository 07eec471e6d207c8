"""The Python shim as a zygote (SEDGE_ZYGOTE=1): it loads the function's
module, then forks a worker for each `fork` frame, handing each the channel
and output descriptors that came with the frame; a module that left
threads or sockets behind is refused as unforkable."""

import array
import json
import os
import socket
import tempfile
import textwrap
import unittest
from pathlib import Path

from test_shims import PREFIX, PYTHON_SHIM, WAIT, Worker

HANDLER = """
import os, random

LOADED_IN = os.getpid()

def handle(req):
    return {"pid": os.getpid(), "pgid": os.getpgid(0), "loaded_in": LOADED_IN, "random": random.random()}
"""


def frame(sock):
    sock.settimeout(WAIT)
    data = b""
    while len(data) < PREFIX.size:
        data += sock.recv(PREFIX.size - len(data)) or b"!" * PREFIX.size
    header_len, body_len = PREFIX.unpack(data[: PREFIX.size])
    rest = b""
    while len(rest) < header_len + body_len:
        more = sock.recv(header_len + body_len - len(rest))
        if not more:
            raise AssertionError("channel closed inside a frame")
        rest += more
    return json.loads(rest[:header_len]), rest[header_len:]


def send(sock, header, body=b""):
    raw = json.dumps(header).encode()
    sock.sendall(PREFIX.pack(len(raw), len(body)) + raw + body)


class Zygote(unittest.TestCase):
    def start(self, code):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        Path(tmp.name, "handler.py").write_text(textwrap.dedent(code))
        env = {**os.environ, "SEDGE_ZYGOTE": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        worker = Worker([os.environ.get("SEDGE_PYTHON", "python3"), str(PYTHON_SHIM), tmp.name, "handler.handle"],
                        cwd=tmp.name, env=env)
        self.addCleanup(worker.kill)
        return worker

    def fork(self, zygote, warm=False):
        ours, theirs = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        raw = json.dumps({"type": "fork", "instance": "f-2", "warm": warm}).encode()
        fds = [theirs.fileno(), out_w, err_w]
        zygote.channel.sendmsg([PREFIX.pack(len(raw), 0) + raw],
                               [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
        theirs.close()
        os.close(out_w)
        os.close(err_w)
        forked, _ = zygote.frame()
        self.assertEqual(forked["type"], "forked", zygote.stderr())
        self.addCleanup(ours.close)
        self.addCleanup(os.close, out_r)
        self.addCleanup(os.close, err_r)
        ready, _ = frame(ours)
        self.assertEqual(ready["type"], "ready")
        return forked["pid"], ours

    def call(self, sock):
        send(sock, {"type": "invoke", "id": 1, "method": "GET", "path": "/", "query": "", "headers": [],
                    "timeout_ms": 30000})
        header, body = frame(sock)
        self.assertEqual(header["status"], 200, body)
        return json.loads(body)

    def test_forks_workers_that_serve_on_their_own_channels(self):
        zygote = self.start(HANDLER)
        first, _ = zygote.frame()
        self.assertEqual(first["type"], "zygote", zygote.stderr())
        (pid_a, a), (pid_b, b) = self.fork(zygote), self.fork(zygote)
        answer_a, answer_b = self.call(a), self.call(b)
        self.assertEqual((answer_a["pid"], answer_b["pid"]), (pid_a, pid_b))
        self.assertEqual(answer_a["loaded_in"], zygote.proc.pid, "the module was loaded once, in the zygote")
        self.assertEqual((answer_a["pgid"], answer_b["pgid"]), (pid_a, pid_b), "each its own process group")
        self.assertNotEqual(answer_a["random"], answer_b["random"], "random is reseeded in each")
        # A worker's channel closing ends it, not the zygote.
        a.close()
        pid_c, c = self.fork(zygote)
        self.assertEqual(self.call(c)["pid"], pid_c)

    def test_a_module_that_started_a_thread_is_unforkable(self):
        zygote = self.start("import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
                            "def handle(req):\n    return 'ok'\n")
        header, _ = zygote.frame()
        self.assertEqual(header["type"], "unforkable")
        self.assertIn("Python threads", header["reason"])

    def test_an_onnxruntime_session_at_import_forks_with_one_thread(self):
        model = Path(__file__).resolve().parents[2] / "examples" / "functions" / "digits-python" / "model.onnx"
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            self.skipTest("onnxruntime is not installed")
        zygote = self.start(f"""
import numpy as np
import onnxruntime as ort
SESSION = ort.InferenceSession({str(model)!r}, providers=["CPUExecutionProvider"])
def handle(req):
    name = SESSION.get_inputs()[0].name
    out = SESSION.run(None, {{name: np.zeros((1, 64), np.float32)}})
    return {{"threads": SESSION.get_session_options().intra_op_num_threads, "ran": len(out)}}
""")
        header, _ = zygote.frame()
        self.assertEqual(header["type"], "zygote", header)
        self.assertGreater(header["model_us"], 0)
        _, worker = self.fork(zygote)
        send(worker, {"type": "invoke", "id": 1, "method": "GET", "path": "/", "query": "", "headers": [],
                      "timeout_ms": 30000})
        answer, body = frame(worker)
        self.assertEqual(answer["status"], 200, body)
        self.assertEqual(json.loads(body)["threads"], 1, "a session without a thread count gets one")

    def test_a_worker_forked_warm_runs_the_models_before_it_is_ready(self):
        model = Path(__file__).resolve().parents[2] / "examples" / "functions" / "digits-python" / "model.onnx"
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            self.skipTest("onnxruntime is not installed")
        # The session counts its runs: one rehearsal in the zygote, one
        # warm-up in the child, then the call's own.
        zygote = self.start(f"""
import numpy as np
import onnxruntime as ort
RUNS = [0]
class Counted(ort.InferenceSession):
    def run(self, *args, **kwargs):
        RUNS[0] += 1
        return super().run(*args, **kwargs)
SESSION = Counted({str(model)!r}, providers=["CPUExecutionProvider"])
def handle(req):
    return {{"runs": RUNS[0]}}
""")
        header, _ = zygote.frame()
        self.assertEqual(header["type"], "zygote", zygote.stderr())
        _, cold = self.fork(zygote)
        _, warm = self.fork(zygote, warm=True)
        self.assertEqual(self.call(cold)["runs"], 1, "rehearsed once in the zygote")
        self.assertEqual(self.call(warm)["runs"], 2, "and once more in the warm child, before ready")

    def test_a_module_that_opened_a_socket_is_unforkable(self):
        zygote = self.start("import socket\nCONN = socket.socket()\ndef handle(req):\n    return 'ok'\n")
        header, _ = zygote.frame()
        self.assertEqual(header["type"], "unforkable")
        self.assertIn("socket", header["reason"])


if __name__ == "__main__":
    unittest.main()
