"""The Python shim's framework styles (docs/styles-python.md): each test
starts the shim as a real subprocess on a function written the way that
framework's docs write them, and speaks the framed protocol to it.

Run from the repository root:  python3 -m unittest discover -s runtimes/tests -v
"""

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

from test_shims import JSON_TYPE, PYTHON_SHIM, REPO, TEXT, Worker

EXAMPLES = REPO / "examples" / "functions"
HAS_FLASK = importlib.util.find_spec("flask") is not None
HAS_BOTTLE = importlib.util.find_spec("bottle") is not None
HAS_ONNXRUNTIME = all(importlib.util.find_spec(m) for m in ("numpy", "onnxruntime"))

FLASK_HTML = "text/html; charset=utf-8"
BOTTLE_HTML = "text/html; charset=UTF-8"


def header_value(header, name):
    """The value of a response frame's header, whatever its case; None when
    absent."""
    values = [value for key, value in header["headers"] if key.lower() == name.lower()]
    return values[-1] if values else None


class StyleTest(unittest.TestCase):
    """Starts the shim with SEDGE_STYLE set to STYLE on a module written
    for the test."""

    STYLE: str

    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="sedge-style-test-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def start(self, source, handler, python_flags=(), **env):
        module = handler.rpartition(".")[0]
        (self.dir / f"{module}.py").write_text(textwrap.dedent(source))
        full_env = dict(
            os.environ,
            SEDGE_FUNCTION="style-fn",
            SEDGE_STYLE=self.STYLE,
            SEDGE_CONCURRENCY="1",
            SEDGE_TIMEOUT="10",
            SEDGE_MEMORY_LIMIT="268435456",
        )
        full_env.update(env)
        command = [sys.executable, *python_flags, "-u", str(PYTHON_SHIM), str(self.dir), handler]
        worker = Worker(command, self.dir, full_env)
        self.addCleanup(worker.kill)
        return worker

    def serve(self, source, handler, **env):
        worker = self.start(source, handler, **env)
        header, _ = worker.frame()
        self.assertEqual(header["type"], "ready", worker.stderr())
        return worker

    def load_error(self, worker):
        header, _ = worker.frame()
        self.assertEqual(header["type"], "load_error", header)
        self.assertEqual(worker.wait(), 1)
        return header["error"]

    def answer(self, worker, path="/", **request):
        """Invokes and checks the answer is a response frame (the framework
        styles answer even failures that way)."""
        header, body = worker.call(path, **request)
        self.assertEqual(header["type"], "response", (header, worker.stderr()))
        return header, body


# --- openfaas ---------------------------------------------------------------

OPENFAAS_HTTP = """
    import json

    def echo(event, context):
        return {
            "statusCode": 200,
            "body": {
                "method": event.method,
                "path": event.path,
                "body": event.body.decode(),
                "body_type": type(event.body).__name__,
                "content_type": event.headers.get("content-type"),
                "by_title": event.headers["Content-Type"],
                "multi": event.headers.get("X-Multi"),
                "header_names": sorted(name for name, _ in event.headers),
                "name": event.query.get("name"),
                "a": event.query["a"],
                "all_a": event.query.getlist("a"),
                "hostname": context.hostname,
                "parsed": json.loads(event.body) if event.headers.get("Content-Type") == "application/json" else None,
            },
        }

    ANSWERS = {
        "/echo": echo,
        "/created": lambda event, context: {
            "statusCode": 201,
            "body": "made",
            "headers": {"X-Trace": "t1", "Content-Type": "text/plain"},
        },
        "/status-only": lambda event, context: {"statusCode": 202},
        "/list-body": lambda event, context: {"body": [1, "a"]},
        "/bytes-body": lambda event, context: {"body": b"\\x00\\xff", "headers": [("Content-Type", "image/png")]},
        "/plain": lambda event, context: "plain text",
        "/none": lambda event, context: None,
        "/tuple": lambda event, context: ("gone", 410, {"X-Why": "moved"}),
        "/list": lambda event, context: [3, 1],
        "/number": lambda event, context: 5,
        "/missing-query": lambda event, context: event.query["nope"],
        "/missing-header": lambda event, context: event.headers["X-Nope"],
    }

    def handle(event, context):
        if event.path == "/raise":
            raise ValueError("bad pixels")
        return ANSWERS[event.path](event, context)
"""

OPENFAAS_CLASSIC = """
    def handle(req):
        if isinstance(req, bytes):
            return "bytes"
        if req.startswith("boom"):
            raise RuntimeError("boom in the handler")
        if req.startswith("tuple"):
            return "not here", 404, {"X-Why": "tuple"}
        if req.startswith("dict"):
            return {"b": 1, "a": [True, None]}
        if req.startswith("type"):
            return type(req).__name__
        if req == "":
            return None
        return "got " + req
"""


class OpenFaasHttpTests(StyleTest):
    STYLE = "openfaas"

    def setUp(self):
        super().setUp()
        self.worker = self.serve(OPENFAAS_HTTP, "handler.handle", HOSTNAME="edge-7")

    def test_event_and_context_reach_the_function(self):
        header, body = self.answer(
            self.worker,
            "/echo",
            method="POST",
            query="name=Ada&a=1&a=2",
            headers=[("content-type", "application/json"), ("x-multi", "1"), ("x-multi", "2")],
            body=b'{"pixels": [1, 2]}',
        )
        self.assertEqual(header["status"], 200)
        self.assertEqual(header_value(header, "content-type"), JSON_TYPE)
        self.assertTrue(body.endswith(b"}\n"), body)  # jsonify's trailing newline
        seen = json.loads(body)
        self.assertEqual(seen["method"], "POST")
        self.assertEqual(seen["path"], "/echo")
        self.assertEqual(seen["body"], '{"pixels": [1, 2]}')
        self.assertEqual(seen["body_type"], "bytes")
        self.assertEqual(seen["content_type"], "application/json")
        self.assertEqual(seen["by_title"], "application/json")
        self.assertEqual(seen["multi"], "1, 2")
        self.assertEqual(seen["header_names"], ["Content-Type", "X-Multi"])
        self.assertEqual((seen["name"], seen["a"], seen["all_a"]), ("Ada", "1", ["1", "2"]))
        self.assertEqual(seen["hostname"], "edge-7")
        self.assertEqual(seen["parsed"], {"pixels": [1, 2]})

    def test_dict_body_is_flask_json(self):
        _, body = self.answer(self.worker, "/echo", query="a=x", headers=[("content-type", "text/plain")], body=b"not json")
        # Flask's jsonify: sorted keys, no spaces.
        self.assertTrue(body.startswith(b'{"a":"x","all_a":["x"],"body":"not json"'), body)
        self.assertIsNone(json.loads(body)["parsed"])

    def test_status_and_headers_come_back(self):
        header, body = self.answer(self.worker, "/created")
        self.assertEqual((header["status"], body), (201, b"made"))
        self.assertEqual(header_value(header, "x-trace"), "t1")
        self.assertEqual(header_value(header, "content-type"), "text/plain")
        self.assertEqual(len([k for k, _ in header["headers"] if k.lower() == "content-type"]), 1)

    def test_dict_answers_follow_the_template(self):
        cases = [
            ("/status-only", 202, FLASK_HTML, b""),
            ("/list-body", 200, FLASK_HTML, b"[1, 'a']"),  # the template's str(body)
            ("/bytes-body", 200, "image/png", b"\x00\xff"),
            ("/plain", 200, FLASK_HTML, b"plain text"),
            ("/none", 200, FLASK_HTML, b""),
            ("/tuple", 410, FLASK_HTML, b"gone"),
            ("/list", 200, JSON_TYPE, b"[3,1]\n"),
        ]
        for path, status, content_type, expected in cases:
            with self.subTest(path=path):
                header, body = self.answer(self.worker, path)
                self.assertEqual(header["status"], status)
                self.assertEqual(header_value(header, "content-type"), content_type)
                self.assertEqual(body, expected)
        header, _ = self.answer(self.worker, "/tuple")
        self.assertEqual(header_value(header, "x-why"), "moved")

    def test_exception_is_flasks_500_page(self):
        header, body = self.answer(self.worker, "/raise")
        self.assertEqual(header["status"], 500)
        self.assertEqual(header_value(header, "content-type"), FLASK_HTML)
        self.assertIn(b"<title>500 Internal Server Error</title>", body)
        self.assertNotIn(b"bad pixels", body)
        self.worker.wait_stderr("ValueError: bad pixels")

    def test_a_return_flask_cannot_send_is_a_500(self):
        header, body = self.answer(self.worker, "/number")
        self.assertEqual(header["status"], 500)
        self.assertIn(b"Internal Server Error", body)

    def test_missing_query_or_header_is_a_400(self):
        for path in ("/missing-query", "/missing-header"):
            with self.subTest(path=path):
                header, body = self.answer(self.worker, path)
                self.assertEqual(header["status"], 400)
                self.assertIn(b"<title>400 Bad Request</title>", body)


class OpenFaasClassicTests(StyleTest):
    STYLE = "openfaas"

    def test_body_in_as_text_and_printed_out(self):
        worker = self.serve(OPENFAAS_CLASSIC, "handler.handle")
        header, body = self.answer(worker, method="POST", body="héllo".encode())
        self.assertEqual((header["status"], body), (200, "got héllo\n".encode()))
        self.assertEqual(header_value(header, "content-type"), TEXT)
        header, body = self.answer(worker, method="POST", body=b"type")
        self.assertEqual(body, b"str\n")
        header, body = self.answer(worker)
        self.assertEqual((header["status"], body), (200, b""))

    def test_content_type_follows_the_request_or_the_content_type_variable(self):
        worker = self.serve(OPENFAAS_CLASSIC, "handler.handle")
        header, _ = self.answer(worker, method="POST", headers=[("content-type", "application/json")], body=b"{}")
        self.assertEqual(header_value(header, "content-type"), "application/json")
        worker = self.serve(OPENFAAS_CLASSIC, "handler.handle", content_type="text/csv")
        header, _ = self.answer(worker, method="POST", headers=[("content-type", "application/json")], body=b"{}")
        self.assertEqual(header_value(header, "content-type"), "text/csv")

    def test_raw_body_gives_bytes(self):
        worker = self.serve(OPENFAAS_CLASSIC, "handler.handle", RAW_BODY="true")
        _, body = self.answer(worker, method="POST", body=b"type")
        self.assertEqual(body, b"bytes\n")

    def test_python3_flask_returns_keep_their_meaning(self):
        worker = self.serve(OPENFAAS_CLASSIC, "handler.handle")
        header, body = self.answer(worker, method="POST", body=b"tuple")
        self.assertEqual((header["status"], body), (404, b"not here"))
        self.assertEqual(header_value(header, "x-why"), "tuple")
        header, body = self.answer(worker, method="POST", body=b"dict")
        self.assertEqual(header_value(header, "content-type"), JSON_TYPE)
        self.assertEqual(body, b'{"a":[true,null],"b":1}\n')

    def test_exception_is_the_watchdogs_500(self):
        worker = self.serve(OPENFAAS_CLASSIC, "handler.handle")
        header, body = self.answer(worker, method="POST", body=b"boom")
        self.assertEqual(header["status"], 500)
        self.assertTrue(body.startswith(b"exit status 1\nTraceback"), body)
        self.assertIn(b"RuntimeError: boom in the handler", body)
        self.assertNotIn(b"sedge_worker", body)
        worker.wait_stderr("RuntimeError: boom in the handler")

    def test_a_handler_without_parameters_is_a_load_error(self):
        error = self.load_error(self.start("def handle():\n    return 1\n", "handler.handle"))
        self.assertIn("(event, context)", error)


# --- kubeless ---------------------------------------------------------------

KUBELESS = """
    def echo(event, context):
        req = event["extensions"]["request"]
        data = event["data"]
        return {
            "data": data.decode() if isinstance(data, bytes) else data,
            "data_type": type(data).__name__,
            "event": {key: event[key] for key in ("event-id", "event-type", "event-time", "event-namespace")},
            "context": context,
            "method": req.method,
            "path": req.path,
            "url": req.url,
            "say_hello_to": req.get_header("Say-Hello-To", "kubeless"),
            "content_type": req.headers.get("content-type"),
            "greeting": req.query.get("greeting", "Hello"),
            "a_last": req.query["a"] if "a" in req.query else None,
            "a_all": req.query.getall("a"),
            "attribute": req.query.greeting,
            "missing_attribute": req.query.nope,
            "raw_body": req.body.read().decode(),
            "json": req.json,
        }

    ANSWERS = {
        "/echo": echo,
        "/text": lambda event, context: "hello world",
        "/bytes": lambda event, context: b"\\x00\\xff",
        "/none": lambda event, context: None,
        "/empty-dict": lambda event, context: {},
        "/strings": lambda event, context: ["a", "b"],
        "/numbers": lambda event, context: [1, 2],
        "/number": lambda event, context: 7,
    }

    def handler(event, context):
        path = event["extensions"]["request"].path
        if path == "/raise":
            raise ValueError("bad pixels")
        return ANSWERS[path](event, context)
"""

KUBELESS_BOTTLE = """
    import bottle

    def handler(event, context):
        path = event["extensions"]["request"].path
        if path == "/created":
            return bottle.HTTPResponse({"id": 7}, status=201, headers={"X-Trace": "t1"})
        if path == "/text":
            return bottle.HTTPResponse("made", status=202, headers={"Content-Type": "text/plain"})
        if path == "/raised":
            raise bottle.HTTPResponse("teapot", status=418)
        raise bottle.HTTPError(404, "no such digit")
"""


class KubelessTests(StyleTest):
    STYLE = "kubeless"

    def setUp(self):
        super().setUp()
        self.worker = self.serve(KUBELESS, "func.handler")

    def test_event_and_context_reach_the_function(self):
        header, body = self.answer(
            self.worker,
            "/echo",
            method="POST",
            query="greeting=Hola&a=1&a=2",
            headers=[
                ("host", "edge.local:8080"),
                ("content-type", "application/json"),
                ("say-hello-to", "John"),
                ("event-id", "abc123"),
                ("event-type", "application/json"),
                ("event-time", "2026-01-02T03:04:05Z"),
                ("event-namespace", "kafkatriggers.kubeless.io"),
            ],
            body=b'{"pixels": [1, 2]}',
        )
        self.assertEqual(header["status"], 200)
        self.assertEqual(header_value(header, "content-type"), JSON_TYPE)
        seen = json.loads(body)
        self.assertEqual((seen["data"], seen["data_type"]), ({"pixels": [1, 2]}, "dict"))
        self.assertEqual(
            seen["event"],
            {
                "event-id": "abc123",
                "event-type": "application/json",
                "event-time": "2026-01-02T03:04:05Z",
                "event-namespace": "kafkatriggers.kubeless.io",
            },
        )
        self.assertEqual(
            seen["context"],
            {"function-name": "style-fn", "timeout": 10.0, "runtime": "python%d.%d" % sys.version_info[:2],
             "memory-limit": "268435456"},
        )
        self.assertEqual((seen["method"], seen["path"]), ("POST", "/echo"))
        self.assertEqual(seen["url"], "http://edge.local:8080/echo?greeting=Hola&a=1&a=2")
        self.assertEqual((seen["say_hello_to"], seen["content_type"]), ("John", "application/json"))
        self.assertEqual((seen["greeting"], seen["attribute"], seen["missing_attribute"]), ("Hola", "Hola", ""))
        self.assertEqual((seen["a_last"], seen["a_all"]), ("2", ["1", "2"]))
        self.assertEqual(seen["raw_body"], '{"pixels": [1, 2]}')
        self.assertEqual(seen["json"], {"pixels": [1, 2]})

    def test_other_bodies_arrive_as_bytes_with_generated_event_fields(self):
        for content_type in ("text/plain", "application/json; charset=utf-8"):
            with self.subTest(content_type=content_type):
                _, body = self.answer(
                    self.worker, "/echo", method="POST", headers=[("content-type", content_type)], body=b'{"a": 1}'
                )
                seen = json.loads(body)
                self.assertEqual((seen["data"], seen["data_type"]), ('{"a": 1}', "bytes"))
                self.assertEqual(seen["event"]["event-type"], content_type)
                self.assertEqual(len(seen["event"]["event-id"]), 11)
                self.assertRegex(seen["event"]["event-time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
                self.assertEqual(seen["event"]["event-namespace"], "sedge")
                self.assertEqual((seen["say_hello_to"], seen["greeting"]), ("kubeless", "Hello"))

    def test_empty_json_body_is_none(self):
        _, body = self.answer(self.worker, "/echo", method="POST", headers=[("content-type", "application/json")])
        self.assertEqual(json.loads(body)["data"], None)

    def test_returns_are_cast_as_bottle_does(self):
        cases = [
            ("/text", 200, BOTTLE_HTML, b"hello world"),
            ("/bytes", 200, BOTTLE_HTML, b"\x00\xff"),
            ("/none", 200, BOTTLE_HTML, b""),
            ("/empty-dict", 200, JSON_TYPE, b"{}"),
            ("/strings", 200, BOTTLE_HTML, b"ab"),
        ]
        for path, status, content_type, expected in cases:
            with self.subTest(path=path):
                header, body = self.answer(self.worker, path)
                self.assertEqual((header["status"], header_value(header, "content-type")), (status, content_type))
                self.assertEqual(body, expected)
        _, body = self.answer(self.worker, "/echo", query="a=1")
        self.assertIn(b'"data_type": "bytes"', body)  # json.dumps as bottle calls it

    def test_values_bottle_cannot_send_are_500_pages(self):
        for path, message in (("/numbers", b"Unsupported response type: &lt;class &#039;int&#039;&gt;"),
                              ("/number", b"Unhandled exception")):
            with self.subTest(path=path):
                header, body = self.answer(self.worker, path)
                self.assertEqual(header["status"], 500)
                self.assertIn(message, body)

    def test_exception_is_bottles_500_page(self):
        header, body = self.answer(self.worker, "/raise", query="x=1", headers=[("host", "edge.local")])
        self.assertEqual(header["status"], 500)
        self.assertEqual(header_value(header, "content-type"), BOTTLE_HTML)
        self.assertIn(b"<h1>Error: 500 Internal Server Error</h1>", body)
        self.assertIn(b"<pre>Internal Server Error</pre>", body)
        self.assertIn(b"http://edge.local/raise?x=1", body)
        self.assertNotIn(b"bad pixels", body)
        self.worker.wait_stderr("ValueError: bad pixels")

    def test_bad_json_is_a_500_before_the_function_runs(self):
        header, body = self.answer(
            self.worker, "/echo", method="POST", headers=[("content-type", "application/json")], body=b"{nope"
        )
        self.assertEqual(header["status"], 500)
        self.assertIn(b"Internal Server Error", body)

    @unittest.skipUnless(HAS_BOTTLE, "bottle is not installed")
    def test_bottle_responses_give_status_and_headers(self):
        worker = self.serve(KUBELESS_BOTTLE, "func.handler")
        header, body = self.answer(worker, "/created")
        self.assertEqual((header["status"], json.loads(body)), (201, {"id": 7}))
        self.assertEqual(header_value(header, "x-trace"), "t1")
        self.assertEqual(header_value(header, "content-type"), JSON_TYPE)
        header, body = self.answer(worker, "/text")
        self.assertEqual((header["status"], header_value(header, "content-type"), body), (202, "text/plain", b"made"))
        header, body = self.answer(worker, "/raised")
        self.assertEqual((header["status"], body), (418, b"teapot"))
        header, body = self.answer(worker, "/error")
        self.assertEqual(header["status"], 404)
        self.assertIn(b"<pre>no such digit</pre>", body)


# --- fission ----------------------------------------------------------------

FISSION = """
    from flask import Response, abort, jsonify, request

    def main():
        path = request.path
        if path == "/echo":
            return {
                "method": request.method,
                "json": request.get_json(silent=True),
                "data": request.get_data(as_text=True),
                "args": request.args.to_dict(flat=False),
                "token": request.headers.get("X-Token"),
                "content_type": request.content_type,
                "url": request.url,
            }
        if path == "/text":
            return "hello"
        if path == "/tuple":
            return "created", 201, {"X-Trace": "t1"}
        if path == "/jsonify":
            return jsonify(digit=2), 202
        if path == "/response":
            return Response("raw", status=203, mimetype="text/plain", headers={"X-A": "1"})
        if path == "/abort":
            abort(404)
        if path == "/strict-json":
            return request.get_json()
        if path == "/none":
            return None
        raise ValueError("bad pixels")
"""


@unittest.skipUnless(HAS_FLASK, "flask is not installed (pip install -r requirements.txt)")
class FissionTests(StyleTest):
    STYLE = "fission"

    def setUp(self):
        super().setUp()
        self.worker = self.serve(FISSION, "main.main")

    def test_flask_request_sees_the_invocation(self):
        header, body = self.answer(
            self.worker,
            "/echo",
            method="PUT",
            query="q=1&q=2&e=",
            headers=[("host", "edge.local"), ("content-type", "application/json"), ("x-token", "t0"),
                     ("content-length", "10")],
            body=b'{"a": [1]}',
        )
        self.assertEqual(header["status"], 200)
        self.assertEqual(header_value(header, "content-type"), JSON_TYPE)
        self.assertEqual(
            json.loads(body),
            {
                "method": "PUT",
                "json": {"a": [1]},
                "data": '{"a": [1]}',
                "args": {"q": ["1", "2"], "e": [""]},
                "token": "t0",
                "content_type": "application/json",
                "url": "http://edge.local/echo?q=1&q=2&e=",
            },
        )
        _, body = self.answer(self.worker, "/echo", method="POST", body=b"plain words")
        seen = json.loads(body)
        self.assertEqual((seen["json"], seen["data"]), (None, "plain words"))

    def test_view_returns_are_made_responses(self):
        cases = [
            ("/text", 200, FLASK_HTML, b"hello"),
            ("/tuple", 201, FLASK_HTML, b"created"),
            ("/jsonify", 202, JSON_TYPE, b'{"digit":2}\n'),
            ("/response", 203, "text/plain; charset=utf-8", b"raw"),
        ]
        for path, status, content_type, expected in cases:
            with self.subTest(path=path):
                header, body = self.answer(self.worker, path)
                self.assertEqual((header["status"], header_value(header, "content-type")), (status, content_type))
                self.assertEqual(body, expected)
        header, _ = self.answer(self.worker, "/tuple")
        self.assertEqual(header_value(header, "x-trace"), "t1")
        header, _ = self.answer(self.worker, "/response")
        self.assertEqual(header_value(header, "x-a"), "1")

    def test_http_errors_and_exceptions_are_flask_pages(self):
        cases = [("/abort", 404), ("/strict-json", 415), ("/none", 500), ("/raise", 500)]
        for path, status in cases:
            with self.subTest(path=path):
                header, body = self.answer(
                    self.worker, path, method="POST", headers=[("content-type", "text/plain")], body=b"x"
                )
                self.assertEqual(header["status"], status)
                self.assertEqual(header_value(header, "content-type"), FLASK_HTML)
                self.assertIn(b"<!doctype html>", body)
        self.worker.wait_stderr("ValueError: bad pixels")

    def test_without_flask_it_is_a_load_error(self):
        # -S leaves site-packages, and so Flask, off the module search path.
        worker = self.start("def main():\n    return 'hi'\n", "main.main", python_flags=["-S"])
        error = self.load_error(worker)
        self.assertIn("needs Flask", error)


# --- funcx ------------------------------------------------------------------

FUNCX = """
    def add(a, b=0, *, scale=1):
        return (a + b) * scale

    def describe(*args, **kwargs):
        return {"args": args, "kwargs": kwargs}

    def fails(x):
        raise ValueError(f"bad pixels: {x}")

    def unsendable():
        return {1, 2}
"""


class FuncXTests(StyleTest):
    STYLE = "funcx"

    def call(self, function, body=b"", **request):
        worker = self.serve(FUNCX, f"funcs.{function}")
        header, answer = self.answer(worker, method="POST", body=body, **request)
        self.assertEqual(header_value(header, "content-type"), JSON_TYPE)
        return header["status"], json.loads(answer), worker

    def test_args_and_kwargs_reach_the_function(self):
        status, answer, _ = self.call("add", b'{"args": [1, 2], "kwargs": {"scale": 3}}')
        self.assertEqual((status, answer), (200, {"result": 9}))
        status, answer, _ = self.call("describe", b'{"kwargs": {"k": "v"}}')
        self.assertEqual(answer, {"result": {"args": [], "kwargs": {"k": "v"}}})

    def test_empty_body_is_a_call_without_arguments(self):
        # The request's query and headers are not the function's business.
        status, answer, _ = self.call("describe", query="x=1", headers=[("x-token", "t")])
        self.assertEqual((status, answer), (200, {"result": {"args": [], "kwargs": {}}}))

    def test_exception_is_a_500_naming_it(self):
        status, answer, worker = self.call("fails", b'{"args": [3]}')
        traceback = answer.pop("traceback")
        self.assertEqual((status, answer), (500, {"exception": "ValueError", "message": "bad pixels: 3"}))
        self.assertIn("ValueError: bad pixels: 3", traceback)
        self.assertNotIn("sedge_worker", traceback)
        worker.wait_stderr("ValueError: bad pixels: 3")
        status, answer, _ = self.call("add", b"{}")
        self.assertEqual((status, answer["exception"]), (500, "TypeError"))

    def test_result_without_json_form_is_a_500(self):
        status, answer, _ = self.call("unsendable")
        self.assertEqual((status, answer["exception"]), (500, "TypeError"))

    def test_bodies_that_are_not_a_call_are_400(self):
        bad = {
            b"{nope": "not JSON",
            b"[1, 2]": "not a JSON list",
            b'{"pixels": [1]}': "unknown field(s): pixels",
            b'{"args": {"a": 1}}': '"args" must be a JSON array',
            b'{"kwargs": [1]}': '"kwargs" must be a JSON object',
        }
        worker = self.serve(FUNCX, "funcs.describe")
        for body, message in bad.items():
            with self.subTest(body=body):
                header, answer = self.answer(worker, method="POST", body=body)
                self.assertEqual(header["status"], 400)
                self.assertIn(message, json.loads(answer)["error"])


# --- the shim itself --------------------------------------------------------


class StyleLoadingTests(StyleTest):
    STYLE = "sedge"

    def test_styles_load_only_what_they_need(self):
        # Cold starts: the sedge style compiles none of the framework styles'
        # code, and neither it nor funcx imports a framework's modules.
        source = """
            import sys

            def handle(*args, **kwargs):
                shim = vars(sys.modules["__main__"])
                imported = [m for m in ("flask", "inspect", "asyncio", "html", "http") if m in sys.modules]
                return {"framework_code": "FRAMEWORK_MAKERS" in shim, "imported": imported}
        """
        for style, framework_code in (("sedge", False), ("funcx", True)):
            with self.subTest(style=style):
                worker = self.serve(source, "handler.handle", SEDGE_STYLE=style)
                _, body = self.answer(worker, method="POST")
                seen = json.loads(body)
                seen = seen.get("result", seen)
                self.assertEqual(seen, {"framework_code": framework_code, "imported": []})


# --- the examples -----------------------------------------------------------


@unittest.skipUnless(HAS_ONNXRUNTIME, "numpy and onnxruntime are not installed (pip install -r requirements.txt)")
class StyleExampleTests(unittest.TestCase):
    """Each example folder, served with the style and handler its manifest
    names, classifies the sample image (a 2)."""

    def serve(self, folder):
        manifest = (folder / "sedge.toml").read_text()
        fields = dict(
            line.split(" = ", 1) for line in manifest.splitlines() if line.startswith(("handler =", "style ="))
        )
        env = dict(os.environ, SEDGE_FUNCTION=folder.name, SEDGE_STYLE=json.loads(fields["style"]),
                   SEDGE_TIMEOUT="10", SEDGE_MEMORY_LIMIT="")
        worker = Worker([sys.executable, "-u", str(PYTHON_SHIM), str(folder), json.loads(fields["handler"])],
                        folder, env)
        self.addCleanup(worker.kill)
        self.assertEqual(worker.frame()[0]["type"], "ready", worker.stderr())
        return worker

    def sample(self):
        return json.loads((EXAMPLES / "digits-python" / "sample.json").read_text())

    def classify(self, name, body, content_type="application/json"):
        worker = self.serve(EXAMPLES / name)
        header, answer = worker.call("/", method="POST", headers=[("content-type", content_type)], body=body)
        return header, answer

    def check_digit(self, header, answer):
        self.assertEqual(header["status"], 200, answer)
        self.assertEqual(json.loads(answer)["digit"], 2)

    @unittest.skipUnless(HAS_FLASK, "flask is not installed")
    def test_fission(self):
        self.check_digit(*self.classify("fission-python", json.dumps(self.sample()).encode()))
        header, answer = self.classify("fission-python", b'{"pixels": [1]}')
        self.assertEqual(header["status"], 400)
        self.assertIn("error", json.loads(answer))

    def test_openfaas(self):
        self.check_digit(*self.classify("openfaas-python", json.dumps(self.sample()).encode()))
        header, answer = self.classify("openfaas-python", b"not json")
        self.assertEqual(header["status"], 400)

    def test_kubeless(self):
        self.check_digit(*self.classify("kubeless-python", json.dumps(self.sample()).encode()))
        header, _ = self.classify("kubeless-python", b"not json", content_type="text/plain")
        self.assertEqual(header["status"], 500)  # the function raises: kubeless's answer

    def test_funcx(self):
        header, answer = self.classify("funcx-python", json.dumps({"args": [self.sample()["pixels"]]}).encode())
        self.assertEqual(header["status"], 200, answer)
        self.assertEqual(json.loads(answer)["result"]["digit"], 2)
        header, answer = self.classify("funcx-python", b'{"args": [[1, 2]]}')
        self.assertEqual((header["status"], json.loads(answer)["exception"]), (500, "ValueError"))


if __name__ == "__main__":
    unittest.main()
