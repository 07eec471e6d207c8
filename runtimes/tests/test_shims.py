"""The runtime shims against docs/protocol.md: each test starts a shim as a
real subprocess on a function folder written for it and speaks the framed
protocol over its channel socket.

Run from the repository root:  python3 -m unittest discover -s runtimes/tests -v
"""

import json
import os
import queue
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON_SHIM = REPO / "runtimes" / "python" / "sedge_worker.py"
NODE_SHIM = REPO / "runtimes" / "node" / "sedge_worker.js"
PREFIX = struct.Struct(">II")
WAIT = 10.0  # seconds; generous so a loaded CI machine does not flake

TEXT = "text/plain; charset=utf-8"
BINARY = "application/octet-stream"
JSON_TYPE = "application/json"

# Run before a shim by Worker(channel_fd=N): moves the channel from the
# descriptor it was passed at to N, then becomes the shim.
MOVE_FD_AND_EXEC = "; ".join((
    "import os, sys",
    "given, wanted = int(sys.argv[1]), int(sys.argv[2])",
    "given == wanted or (os.dup2(given, wanted), os.close(given))",
    "os.execvp(sys.argv[3], sys.argv[3:])",
))


class Worker:
    """A shim process as sedge starts it: frames on one end of a socket pair
    passed in at SEDGE_CHANNEL_FD, stdin from /dev/null, stdout and stderr
    collected. A test can wait for a frame or for output with a timeout
    instead of blocking forever."""

    def __init__(self, argv, cwd, env, channel_fd=None):
        self.channel, child_end = socket.socketpair()
        with child_end:
            fd = child_end.fileno()
            if channel_fd is None:
                # A test may name another descriptor, to see it refused.
                env = {"SEDGE_CHANNEL_FD": str(fd), **env}
            else:
                env = {name: value for name, value in env.items() if name != "SEDGE_CHANNEL_FD"}
                # As sedge does: the channel at a fixed descriptor number.
                argv = [sys.executable, "-c", MOVE_FD_AND_EXEC, str(fd), str(channel_fd), *argv]
            self.proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, pass_fds=[fd],
            )
        self.frames = queue.Queue()
        self._output = {"stdout": [], "stderr": []}
        self._output_lock = threading.Lock()
        threading.Thread(target=self._read_frames, daemon=True).start()
        self._output_readers = [
            threading.Thread(target=self._read_output, args=(name,), daemon=True) for name in self._output
        ]
        for reader in self._output_readers:
            reader.start()

    def _read_frames(self):
        with self.channel.makefile("rb") as out:
            while True:
                try:
                    prefix = out.read(PREFIX.size)
                except OSError:
                    prefix = b""
                if len(prefix) < PREFIX.size:
                    self.frames.put(("eof", prefix))
                    return
                header_len, body_len = PREFIX.unpack(prefix)
                header = out.read(header_len)
                body = out.read(body_len)
                try:
                    self.frames.put((json.loads(header), body))
                except ValueError:
                    self.frames.put(("garbage", header))
                    return

    def _read_output(self, name):
        for line in getattr(self.proc, name):
            with self._output_lock:
                self._output[name].append(line.decode("utf-8", "replace"))

    def output(self, name):
        with self._output_lock:
            return "".join(self._output[name])

    def stderr(self):
        return self.output("stderr")

    def stdout(self):
        return self.output("stdout")

    def wait_output(self, name, text, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while text not in self.output(name):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{text!r} never appeared on {name}; got:\n{self.output(name)}\nstderr:\n{self.stderr()}"
                )
            time.sleep(0.01)

    def wait_stderr(self, text, timeout=WAIT):
        self.wait_output("stderr", text, timeout)

    def wait_stdout(self, text, timeout=WAIT):
        self.wait_output("stdout", text, timeout)

    def send_raw(self, data):
        self.channel.sendall(data)

    def send(self, header, body=b""):
        raw = json.dumps(header).encode()
        self.send_raw(PREFIX.pack(len(raw), len(body)) + raw + body)

    def invoke(self, invocation_id, path="/", method="GET", query="", headers=(), body=b""):
        self.send(
            {
                "type": "invoke",
                "id": invocation_id,
                "method": method,
                "path": path,
                "query": query,
                "headers": [list(pair) for pair in headers],
                "timeout_ms": 30000,
            },
            body,
        )

    def frame(self, timeout=WAIT):
        try:
            header, body = self.frames.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no frame within {timeout}s; stderr:\n{self.stderr()}") from None
        if header in ("eof", "garbage"):
            raise AssertionError(f"expected a frame, got {header} ({body!r}); stderr:\n{self.stderr()}")
        return header, body

    def call(self, path="/", **kwargs):
        """Invokes and returns the answer, checking it is for this call."""
        self.invoke(1, path, **kwargs)
        header, body = self.frame()
        if header.get("id") != 1:
            raise AssertionError(f"answer for another id: {header}")
        return header, body

    def end_channel(self):
        """Ends sedge's side of the stream, as sedge does to ask a worker to
        exit; answers still in flight can come back."""
        self.channel.shutdown(socket.SHUT_WR)

    def wait(self, timeout=WAIT):
        code = self.proc.wait(timeout=timeout)
        # The output readers may not have read the last lines yet; they end at
        # the pipes' end of file, which follows the exit.
        for reader in self._output_readers:
            reader.join(timeout)
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        # The readers end at the pipes' end of file; closing a pipe under a
        # reader instead would fail in its thread. A child process the
        # worker left behind may hold the pipes open, hence the timeout.
        for reader in self._output_readers:
            reader.join(timeout=1)
        for stream in (self.channel, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass


class ShimContract:
    """The behaviour both shims share. A subclass names the runtime and gives
    the function sources, keyed by what they do; each language's table of
    return values is in RETURN_CASES."""

    HANDLER_FILE: str
    SOURCES: dict
    RETURN_CASES: list

    def command(self, handler):
        raise NotImplementedError

    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="sedge-shim-test-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def start(self, source=None, handler="handler.handle", channel_fd=None, **env):
        if source is not None:
            (self.dir / self.HANDLER_FILE).write_text(textwrap.dedent(self.SOURCES[source]))
        full_env = dict(os.environ, SEDGE_FUNCTION="test-fn", SEDGE_STYLE="sedge", SEDGE_CONCURRENCY="1")
        full_env.update(env)
        worker = Worker(self.command(handler), self.dir, full_env, channel_fd=channel_fd)
        self.addCleanup(worker.kill)
        return worker

    def start_ready(self, source, **env):
        worker = self.start(source, **env)
        header, body = worker.frame()
        self.assertEqual(header["type"], "ready", worker.stderr())
        self.assertEqual(body, b"")
        return worker

    def expect_load_error(self, worker, *fragments):
        header, _ = worker.frame()
        self.assertEqual(header["type"], "load_error", header)
        for fragment in fragments:
            self.assertIn(fragment, header["error"])
        self.assertEqual(worker.wait(), 1)
        return header["error"]

    # --- start-up ---

    def test_ready_then_eof_exits_zero(self):
        worker = self.start_ready("kinds")
        worker.end_channel()
        self.assertEqual(worker.wait(), 0)

    def test_missing_module_is_a_load_error(self):
        self.expect_load_error(self.start(handler="nope.handle"), "nope")

    def test_missing_function_is_a_load_error(self):
        self.expect_load_error(self.start("kinds", handler="handler.nope"), "nope")

    def test_syntax_error_is_a_load_error(self):
        self.expect_load_error(self.start("syntax"), "SyntaxError")

    def test_exception_at_import_is_a_load_error_with_trace(self):
        error = self.expect_load_error(self.start("import_fails"), "model file missing")
        self.assertIn(self.HANDLER_FILE, error)

    def test_unknown_style_is_a_load_error_naming_it(self):
        self.expect_load_error(self.start("kinds", SEDGE_STYLE="knative"), "knative")

    # --- answers ---

    def test_every_return_kind(self):
        worker = self.start_ready("kinds")
        for path, status, headers, body in self.RETURN_CASES:
            with self.subTest(path=path):
                header, got = worker.call(path)
                self.assertEqual(header["type"], "response", header)
                self.assertEqual(header["status"], status)
                self.assertEqual(header["headers"], headers)
                self.assertEqual(got, body)

    def test_values_without_json_form_are_errors(self):
        worker = self.start_ready("kinds")
        for path in self.UNSENDABLE:
            with self.subTest(path=path):
                header, body = worker.call(path)
                self.assertEqual(header["type"], "error", header)
                self.assertEqual(body, b"")

    def test_request_reaches_the_handler(self):
        worker = self.start_ready("kinds")
        header, body = worker.call(
            "/echo",
            method="POST",
            query="a=1&a=2&b=&c=x%20y",
            headers=[("content-type", "application/json"), ("x-multi", "1"), ("x-multi", "2")],
            body=b'{"name": "Ada"}',
        )
        self.assertEqual(header["status"], 200, header)
        seen = json.loads(body)
        self.assertEqual(seen["method"], "POST")
        self.assertEqual(seen["path"], "/echo")
        self.assertEqual(seen["query"], {"a": "1", "b": "", "c": "x y"})
        self.assertEqual(seen["headers"], {"content-type": "application/json", "x-multi": "1, 2"})
        self.assertEqual(seen["text"], '{"name": "Ada"}')
        self.assertEqual(seen["json"], {"name": "Ada"})

    def test_binary_body_arrives_intact(self):
        worker = self.start_ready("kinds")
        payload = bytes(range(256)) * 12289  # ~3 MiB: many pipe reads
        header, body = worker.call("/echo-bytes", method="POST", body=payload)
        self.assertEqual(header["status"], 200, header)
        self.assertEqual(body, payload)

    def test_frames_written_together_are_all_answered(self):
        worker = self.start_ready("kinds")
        raw = b""
        for i in range(1, 51):
            head = json.dumps({"type": "invoke", "id": i, "method": "GET", "path": "/text",
                               "query": "", "headers": [], "timeout_ms": 1000}).encode()
            raw += PREFIX.pack(len(head), 0) + head
        worker.send_raw(raw)
        ids = {worker.frame()[0]["id"] for _ in range(50)}
        self.assertEqual(ids, set(range(1, 51)))

    def test_bad_json_body_makes_json_raise(self):
        worker = self.start_ready("kinds")
        header, _ = worker.call("/parse", method="POST", body=b"{not json")
        self.assertEqual(header["type"], "error")

    # --- logs and failures ---

    def test_printing_goes_to_stdout_not_into_the_protocol(self):
        worker = self.start_ready("prints")
        worker.wait_stdout("loading now")
        header, body = worker.call("/")
        self.assertEqual((header["type"], body), ("response", b"still framed"))
        worker.wait_stdout("inside the handler")
        worker.wait_stdout("written to stdout")
        header, body = worker.call("/stdin")
        self.assertEqual(body, b"stdin gave 0 bytes")
        worker.end_channel()
        self.assertEqual(worker.wait(), 0)

    def test_exception_is_an_error_frame_with_trace(self):
        worker = self.start_ready("raises")
        header, body = worker.call("/")
        self.assertEqual(header["type"], "error")
        self.assertEqual(header["id"], 1)
        self.assertEqual(header["error"], self.RAISED)
        self.assertIn(self.HANDLER_FILE, header["trace"])
        self.assertNotIn("sedge_worker", header["trace"])
        self.assertEqual(body, b"")
        worker.wait_stderr("bad pixels")
        # The worker lives on after a failed call.
        header, _ = worker.call("/")
        self.assertEqual(header["type"], "error")

    def test_async_handler(self):
        worker = self.start_ready("async")
        for _ in range(2):
            header, body = worker.call("/", query="n=20")
            self.assertEqual(header["status"], 200, header)
            self.assertEqual(json.loads(body), {"waited": "20"})

    def test_async_rejection_is_an_error_frame(self):
        worker = self.start_ready("async")
        header, _ = worker.call("/fail")
        self.assertEqual(header["type"], "error")
        self.assertIn("async failure", header["error"])

    def test_malformed_frames_exit_two(self):
        bad_frames = {
            "oversized header": PREFIX.pack(1024 * 1024 + 1, 0),
            "oversized body": PREFIX.pack(2, 1024 * 1024 * 1024 + 1) + b"{}",
            "not json": PREFIX.pack(5, 0) + b"nope!",
            "not an invoke": PREFIX.pack(16, 0) + b'{"type":"ready"}',
        }
        for name, raw in bad_frames.items():
            with self.subTest(name):
                worker = self.start_ready("kinds")
                worker.send_raw(raw)
                self.assertEqual(worker.wait(), 2)
                self.assertIn("bad frame", worker.stderr())

    def test_stream_ending_inside_a_frame_exits_two(self):
        worker = self.start_ready("kinds")
        worker.send_raw(PREFIX.pack(10, 0) + b'{"typ')
        worker.end_channel()
        self.assertEqual(worker.wait(), 2)

    def test_concurrent_invocations_answer_out_of_order(self):
        worker = self.start_ready("slow", SEDGE_CONCURRENCY="2")
        worker.invoke(1, "/", query="ms=800")
        worker.invoke(2, "/", query="ms=0")
        first, _ = worker.frame()
        second, _ = worker.frame()
        self.assertEqual((first["id"], second["id"]), (2, 1))

    # --- the channel ---

    def test_output_through_descriptor_one_reaches_stdout_not_the_channel(self):
        worker = self.start_ready("writes_fd1")
        for _ in range(2):  # the second call finds the stream still in step
            header, body = worker.call("/")
            self.assertEqual((header["type"], header["status"], body), ("response", 200, b"answered"), worker.stderr())
        for text in self.FD1_TEXTS:
            worker.wait_stdout(text)
        worker.wait_stderr("to stderr")
        self.assertNotIn("to stderr", worker.stdout())

    def test_channel_at_descriptor_three_when_unnamed(self):
        worker = self.start_ready("kinds", channel_fd=3)
        header, body = worker.call("/text")
        self.assertEqual((header["status"], body), (200, "héllo".encode()))
        worker.end_channel()
        self.assertEqual(worker.wait(), 0)

    def test_channel_closed_both_ways_exits_zero(self):
        worker = self.start_ready("kinds")
        worker.channel.shutdown(socket.SHUT_RDWR)
        self.assertEqual(worker.wait(), 0)

    def test_no_channel_exits_two(self):
        worker = self.start("kinds", SEDGE_CHANNEL_FD="99")
        self.assertEqual(worker.wait(), 2)
        self.assertIn("SEDGE_CHANNEL_FD", worker.stderr())

    # --- max_answer ---

    def test_answer_over_max_answer_is_an_error_frame(self):
        for limit, over in ((1000, 1001), (100_000, 300_000)):  # one small, one past the coalescing size
            with self.subTest(limit=limit):
                worker = self.start_ready("sized", SEDGE_MAX_ANSWER=str(limit))
                header, body = worker.call("/", query=f"n={limit}")
                self.assertEqual((header["type"], len(body)), ("response", limit))
                header, body = worker.call("/", query=f"n={over}")
                message = f"answer of {over} bytes is over the function's max_answer of {limit} bytes"
                self.assertEqual((header["type"], header["id"], header["error"], body), ("error", 1, message, b""))
                # The worker serves on.
                header, body = worker.call("/", query="n=10")
                self.assertEqual((header["type"], body), ("response", b"x" * 10))

    def test_bad_max_answer_is_a_load_error(self):
        for bad in ("ten", "-5", "0", "1.5"):
            with self.subTest(bad=bad):
                self.expect_load_error(self.start("sized", SEDGE_MAX_ANSWER=bad), "SEDGE_MAX_ANSWER")


class PythonShimTests(ShimContract, unittest.TestCase):
    HANDLER_FILE = "handler.py"
    RAISED = "ValueError: bad pixels"
    UNSENDABLE = ["/set", "/nan", "/bad-status"]

    def command(self, handler):
        return [sys.executable, "-u", str(PYTHON_SHIM), str(self.dir), handler]

    SOURCES = {
        "kinds": """
            import sedge

            def echo(req):
                return {"method": req.method, "path": req.path, "query": req.query,
                        "query_all": req.query_all, "headers": req.headers,
                        "text": req.text, "json": req.json()}

            ANSWERS = {
                "/text": lambda req: "héllo",
                "/bytes": lambda req: b"\\x00\\xff",
                "/bytearray": lambda req: bytearray(b"ab"),
                "/none": lambda req: None,
                "/dict": lambda req: {"a": [1, 2.5, None, True]},
                "/list": lambda req: ["x", 1],
                "/number": lambda req: 42,
                "/bool": lambda req: False,
                "/response": lambda req: sedge.Response(b"raw", status=201, headers={"X-Trace": "t1"}),
                "/response-json": lambda req: sedge.Response({"ok": True}, status=202),
                "/response-typed": lambda req: sedge.Response("<b>hi</b>", headers={"Content-Type": "text/html"}),
                "/response-empty": lambda req: sedge.Response(None, status=302, headers=[("location", "/x")]),
                "/set": lambda req: {1, 2},
                "/nan": lambda req: float("nan"),
                "/bad-status": lambda req: sedge.Response("x", status=1000),
                "/echo": echo,
                "/echo-bytes": lambda req: req.body,
                "/parse": lambda req: req.json(),
            }

            def handle(req):
                return ANSWERS[req.path](req)
        """,
        "syntax": """
            def handle(req)
                return 1
        """,
        "import_fails": """
            raise FileNotFoundError("model file missing")
        """,
        "prints": """
            import subprocess, sys
            print("loading now")

            def handle(req):
                if req.path == "/stdin":
                    return f"stdin gave {len(sys.stdin.read())} bytes"
                if req.path == "/child":
                    subprocess.run(["echo", "from a child process"], check=True)
                    return "ran"
                print("inside the handler")
                sys.stdout.write("written to stdout\\n")
                return b"still framed"
        """,
        "raises": """
            def handle(req):
                raise ValueError("bad pixels")
        """,
        "async": """
            import asyncio

            async def handle(req):
                if req.path == "/fail":
                    raise RuntimeError("async failure")
                await asyncio.sleep(int(req.query["n"]) / 1000)
                return {"waited": req.query["n"]}
        """,
        "slow": """
            import time

            def handle(req):
                time.sleep(int(req.query["ms"]) / 1000)
                return req.query["ms"]
        """,
        "writes_fd1": """
            import os, subprocess, sys

            def handle(req):
                print("printed x")
                os.write(1, b"raw write\\n")
                os.system("echo hi from os.system")
                subprocess.run(["echo", "hi from subprocess.run"], check=True)
                print("to stderr", file=sys.stderr)
                return "answered"
        """,
        "sized": """
            def handle(req):
                return b"x" * int(req.query["n"])
        """,
        "fds": """
            import os

            def handle(req):
                channel = int(os.environ["SEDGE_CHANNEL_FD"])
                try:
                    os.fstat(channel)
                    original = "open"
                except OSError:
                    original = "closed"
                fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
                inheritable = [fd for fd in fds if fd > 2 and _inheritable(fd)]
                return {"original": original, "inheritable": inheritable}

            def _inheritable(fd):
                try:
                    return os.get_inheritable(fd)
                except OSError:  # the listing's own descriptor, gone by now
                    return False
        """,
    }

    FD1_TEXTS = ["printed x", "raw write", "hi from os.system", "hi from subprocess.run"]

    RETURN_CASES = [
        ("/text", 200, [["content-type", TEXT]], "héllo".encode()),
        ("/bytes", 200, [["content-type", BINARY]], b"\x00\xff"),
        ("/bytearray", 200, [["content-type", BINARY]], b"ab"),
        ("/none", 204, [], b""),
        ("/dict", 200, [["content-type", JSON_TYPE]], b'{"a": [1, 2.5, null, true]}'),
        ("/list", 200, [["content-type", JSON_TYPE]], b'["x", 1]'),
        ("/number", 200, [["content-type", JSON_TYPE]], b"42"),
        ("/bool", 200, [["content-type", JSON_TYPE]], b"false"),
        ("/response", 201, [["X-Trace", "t1"], ["content-type", BINARY]], b"raw"),
        ("/response-json", 202, [["content-type", JSON_TYPE]], b'{"ok": true}'),
        ("/response-typed", 200, [["Content-Type", "text/html"]], b"<b>hi</b>"),
        ("/response-empty", 302, [["location", "/x"]], b""),
    ]

    def test_child_process_output_goes_to_stdout(self):
        worker = self.start_ready("prints")
        header, body = worker.call("/child")
        self.assertEqual((header["type"], body), ("response", b"ran"))
        worker.wait_stdout("from a child process")

    def test_query_all_keeps_every_value(self):
        worker = self.start_ready("kinds")
        _, body = worker.call("/echo", query="a=1&a=2&b=", body=b"null")
        self.assertEqual(json.loads(body)["query_all"], {"a": ["1", "2"], "b": [""]})

    def test_concurrency_one_answers_in_order(self):
        worker = self.start_ready("slow")
        worker.invoke(1, "/", query="ms=300")
        worker.invoke(2, "/", query="ms=0")
        self.assertEqual([worker.frame()[0]["id"] for _ in range(2)], [1, 2])

    def test_eof_waits_for_invocations_in_flight(self):
        worker = self.start_ready("slow", SEDGE_CONCURRENCY="2")
        worker.invoke(1, "/", query="ms=300")
        worker.end_channel()
        header, body = worker.frame()
        self.assertEqual((header["id"], body), (1, b"300"))
        self.assertEqual(worker.wait(), 0)

    def test_channel_is_not_left_for_user_code(self):
        worker = self.start_ready("fds")
        header, body = worker.call("/")
        self.assertEqual(json.loads(body), {"original": "closed", "inheritable": []}, worker.stderr())

    def test_bad_concurrency_is_a_load_error(self):
        self.expect_load_error(self.start("kinds", SEDGE_CONCURRENCY="zero"), "SEDGE_CONCURRENCY")


class NodeShimTests(ShimContract, unittest.TestCase):
    HANDLER_FILE = "handler.js"
    RAISED = "TypeError: bad pixels"
    UNSENDABLE = ["/bigint", "/function", "/bad-status"]

    def command(self, handler):
        return ["node", str(NODE_SHIM), str(self.dir), handler]

    SOURCES = {
        "kinds": """
            const ANSWERS = {
              '/text': () => 'héllo',
              '/buffer': () => Buffer.from([0, 255]),
              '/uint8array': () => new Uint8Array([97, 98]),
              '/undefined': () => undefined,
              '/null': () => null,
              '/object': () => ({ a: [1, 2.5, null, true] }),
              '/array': () => ['x', 1],
              '/number': () => 42,
              '/bool': () => false,
              '/web-text': () => new Response('hi'),
              '/web-bytes': () => new Response(new Uint8Array([1, 2]), { status: 201, headers: { 'X-Trace': 't1' } }),
              '/web-json': () => Response.json({ ok: true }, { status: 202 }),
              '/web-empty': () => new Response(null, { status: 302, headers: [['location', '/x']] }),
              '/fetch-like': () => ({ status: 203, headers: new Map([['X-Lib', 'yes']]),
                                      arrayBuffer: async () => new TextEncoder().encode('ok').buffer }),
              '/bigint': () => 10n,
              '/function': () => () => 1,
              '/bad-status': () => Response.error(),
              '/echo': (req) => ({ method: req.method, path: req.path, query: req.query,
                                   headers: req.headers, text: req.text(), json: req.json() }),
              '/echo-bytes': (req) => req.body,
              '/parse': (req) => req.json(),
            };

            exports.handle = (req) => ANSWERS[req.path](req);
        """,
        "syntax": """
            exports.handle = (req) => {;
        """,
        "import_fails": """
            throw new Error('model file missing');
        """,
        "prints": """
            console.log('loading now');

            exports.handle = async (req) => {
              if (req.path === '/stdin') {
                let n = 0;
                for await (const chunk of process.stdin) n += chunk.length;
                return `stdin gave ${n} bytes`;
              }
              console.log('inside the handler');
              process.stdout.write('written to stdout\\n');
              return Buffer.from('still framed');
            };
        """,
        "raises": """
            exports.handle = (req) => {
              throw new TypeError('bad pixels');
            };
        """,
        "async": """
            const { setTimeout: sleep } = require('timers/promises');

            exports.handle = async (req) => {
              if (req.path === '/fail') throw new Error('async failure');
              await sleep(Number(req.query.n));
              return { waited: req.query.n };
            };
        """,
        "slow": """
            const { setTimeout: sleep } = require('timers/promises');

            exports.handle = async (req) => {
              await sleep(Number(req.query.ms));
              return req.query.ms;
            };
        """,
        "writes_fd1": """
            const fs = require('fs');
            const { execSync } = require('child_process');

            exports.handle = () => {
              console.log('logged x');
              fs.writeSync(1, 'raw write\\n');
              execSync('echo hi from execSync', { stdio: 'inherit' });
              console.error('to stderr');
              return Buffer.from('answered');
            };
        """,
        "sized": """
            exports.handle = (req) => Buffer.alloc(Number(req.query.n), 'x');
        """,
    }

    FD1_TEXTS = ["logged x", "raw write", "hi from execSync"]

    RETURN_CASES = [
        ("/text", 200, [["content-type", TEXT]], "héllo".encode()),
        ("/buffer", 200, [["content-type", BINARY]], b"\x00\xff"),
        ("/uint8array", 200, [["content-type", BINARY]], b"ab"),
        ("/undefined", 204, [], b""),
        ("/null", 200, [["content-type", JSON_TYPE]], b"null"),
        ("/object", 200, [["content-type", JSON_TYPE]], b'{"a":[1,2.5,null,true]}'),
        ("/array", 200, [["content-type", JSON_TYPE]], b'["x",1]'),
        ("/number", 200, [["content-type", JSON_TYPE]], b"42"),
        ("/bool", 200, [["content-type", JSON_TYPE]], b"false"),
        ("/web-text", 200, [["content-type", "text/plain;charset=UTF-8"]], b"hi"),
        ("/web-bytes", 201, [["x-trace", "t1"], ["content-type", BINARY]], b"\x01\x02"),
        ("/web-json", 202, [["content-type", JSON_TYPE]], b'{"ok":true}'),
        ("/web-empty", 302, [["location", "/x"]], b""),
        ("/fetch-like", 203, [["X-Lib", "yes"], ["content-type", BINARY]], b"ok"),
    ]

    def test_eof_waits_for_invocations_in_flight(self):
        worker = self.start_ready("slow")
        worker.invoke(1, "/", query="ms=300")
        worker.end_channel()
        header, body = worker.frame()
        self.assertEqual((header["id"], body), (1, b"300"))
        self.assertEqual(worker.wait(), 0)

    def test_thrown_non_error_is_an_error_frame(self):
        (self.dir / "handler.js").write_text("exports.handle = () => { throw 'plain string'; };\n")
        worker = self.start()
        self.assertEqual(worker.frame()[0]["type"], "ready")
        header, _ = worker.call("/")
        self.assertEqual(header["type"], "error")
        self.assertIn("plain string", header["error"])


if __name__ == "__main__":
    unittest.main()
