"""The Node.js shim's framework styles (openfaas, kubeless, fission) against
the rules in docs/styles-node.md: each test starts the shim as a real
subprocess on a function written the framework's way and speaks the framed
protocol over its pipes. The example functions under examples/functions
that use these styles are served from their own manifests at the end.

Run from the repository root:  python3 -m unittest discover -s runtimes/tests -v
"""

import json
import os
import shutil
import tempfile
import textwrap
import time
import tomllib
import unittest
from pathlib import Path

from test_shims import NODE_SHIM, REPO, Worker

EXAMPLES = REPO / "examples" / "functions"
HTML = "text/html; charset=utf-8"
JSON_UTF8 = "application/json; charset=utf-8"
ERROR_PAGE_HEADERS = [
    ["Content-Security-Policy", "default-src 'none'"],
    ["X-Content-Type-Options", "nosniff"],
    ["Content-Type", HTML],
]


class StyleCase(unittest.TestCase):
    STYLE = ""

    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="sedge-style-test-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def launch(self, source, handler="handler.handle", filename="handler.js", **env):
        if source is not None:
            (self.dir / filename).write_text(textwrap.dedent(source))
        full_env = dict(
            os.environ,
            SEDGE_FUNCTION="test-fn",
            SEDGE_STYLE=self.STYLE,
            SEDGE_CONCURRENCY="1",
            SEDGE_TIMEOUT="30",
            SEDGE_MEMORY_LIMIT="",
        )
        full_env.update(env)
        worker = Worker(["node", str(NODE_SHIM), str(self.dir), handler], self.dir, full_env)
        self.addCleanup(worker.kill)
        return worker

    def start(self, source, handler="handler.handle", filename="handler.js", **env):
        worker = self.launch(source, handler, filename, **env)
        header, _ = worker.frame()
        self.assertEqual(header["type"], "ready", worker.stderr())
        return worker

    def send(self, worker, path="/", method="GET", body=b"", content_type=None, headers=(), query=""):
        """Invokes as an HTTP client would ask (Content-Length with a body)
        and returns the answer frame's header and body."""
        pairs = [("content-type", content_type)] if content_type else []
        if body:
            pairs.append(("content-length", str(len(body))))
        pairs.extend(headers)
        return worker.call(path, method=method, query=query, headers=pairs, body=body)

    def answer(self, worker, path="/", **kwargs):
        """[status, headers, body] of a `response` frame."""
        header, body = self.send(worker, path, **kwargs)
        self.assertEqual(header["type"], "response", f"{header}\n{worker.stderr()}")
        return header["status"], header["headers"], body

    def seen(self, worker, path="/", **kwargs):
        """The JSON an echoing function answered with."""
        status, _, body = self.answer(worker, path, **kwargs)
        self.assertEqual(status, 200, body)
        return json.loads(body)


# --- openfaas ------------------------------------------------------------------


class OpenfaasStyleTests(StyleCase):
    STYLE = "openfaas"

    ECHO = """
        'use strict'

        module.exports = async (event, context) => {
          const body = Buffer.isBuffer(event.body) ? { buffer: event.body.toString('base64') } : event.body
          return context
            .headers({ 'Content-Type': 'application/json' })
            .succeed({ body, bodyType: typeof event.body, headers: event.headers,
                       method: event.method, query: event.query, path: event.path })
        }
    """

    ANSWERS = """
        'use strict'
        const { Readable } = require('stream')

        const ANSWERS = {
          '/object': () => ({ a: 1 }),
          '/array': () => [1, 'x'],
          '/string': () => 'hi',
          '/buffer': () => Buffer.from([0, 255]),
          '/undefined': () => undefined,
          '/null': () => null,
          '/boolean': () => true,
          '/number': () => 404,
          '/custom': (event, context) => context
            .status(201)
            .headers({ 'X-Trace': 't1', 'Content-Type': 'application/json' })
            .succeed({ ok: true }),
          '/text-type': (event, context) => context.headers({ 'Content-Type': 'text/plain' }).succeed('plain'),
          '/no-content': (event, context) => context.status(204).succeed('dropped'),
          '/callback': (event, context, callback) => { callback(undefined, { via: 'callback' }) },
          '/fail': (event, context) => context.fail('bad input'),
          '/fail-status': (event, context) => context.status(422).fail(new Error('no')),
          '/fail-empty': (event, context) => context.fail(),
          '/throw': () => { throw new TypeError('boom') },
          '/reject': () => Promise.reject(new Error('nope')),
          '/throw-with-status': (event, context) => { context.status(503); throw new Error('down') },
          '/throw-with-headers': (event, context) => { context.headers({ 'X-Trace': 't1' }); throw new Error('x') },
          '/succeed-then-throw': (event, context) => { context.succeed('first'); throw new Error('late') },
          '/bad-status': (event, context) => context.status(1000).succeed('x'),
        }

        module.exports = async (event, context, callback) => ANSWERS[event.path](event, context, callback)
    """

    CASES = [
        ("/object", 200, [["Content-Type", HTML]], b'{"a":1}'),
        ("/array", 200, [["Content-Type", HTML]], b'[1,"x"]'),
        ("/string", 200, [["Content-Type", HTML]], b"hi"),
        ("/buffer", 200, [["Content-Type", "application/octet-stream"]], b"\x00\xff"),
        ("/undefined", 200, [], b""),
        ("/null", 200, [], b""),
        ("/boolean", 200, [["Content-Type", JSON_UTF8]], b"true"),
        ("/number", 404, [["Content-Type", "text/plain; charset=utf-8"]], b"Not Found"),
        ("/custom", 201, [["X-Trace", "t1"], ["Content-Type", JSON_UTF8]], b'{"ok":true}'),
        ("/text-type", 200, [["Content-Type", "text/plain; charset=utf-8"]], b"plain"),
        ("/no-content", 204, [], b""),
        ("/callback", 200, [["Content-Type", HTML]], b'{"via":"callback"}'),
        ("/fail", 500, [["Content-Type", HTML]], b"bad input"),
        ("/fail-status", 422, [["Content-Type", HTML]], b"Error: no"),
        ("/fail-empty", 500, [], b""),
        # The template answers a thrown error with the status set so far:
        # 200 unless the function changed it.
        ("/throw", 200, [["Content-Type", HTML]], b"TypeError: boom"),
        ("/reject", 200, [["Content-Type", HTML]], b"Error: nope"),
        ("/throw-with-status", 503, [["Content-Type", HTML]], b"Error: down"),
        ("/throw-with-headers", 200, [["Content-Type", HTML]], b"Error: x"),
        ("/succeed-then-throw", 200, [["Content-Type", HTML]], b"first"),
    ]

    def test_json_body_is_parsed(self):
        worker = self.start(self.ECHO)
        status, headers, body = self.answer(
            worker, "/classify", method="POST", content_type="application/json", body=b'{"features": [1, 2.5]}'
        )
        self.assertEqual((status, headers), (200, [["Content-Type", JSON_UTF8]]))
        seen = json.loads(body)
        self.assertEqual((seen["body"], seen["bodyType"]), ({"features": [1, 2.5]}, "object"))
        self.assertEqual((seen["method"], seen["path"]), ("POST", "/classify"))

    def test_text_and_untyped_bodies_are_strings(self):
        worker = self.start(self.ECHO)
        seen = self.seen(worker, method="POST", content_type="text/csv", body="1,2,é".encode())
        self.assertEqual((seen["body"], seen["bodyType"]), ("1,2,é", "string"))
        seen = self.seen(worker, method="POST", body=b'{"not": "parsed"}')
        self.assertEqual(seen["body"], '{"not": "parsed"}')
        self.assertEqual(seen["headers"]["content-type"], "text/plain")
        seen = self.seen(worker, method="POST", content_type="text/plain; charset=latin1", body="é".encode("latin-1"))
        self.assertEqual(seen["body"], "é")

    def test_other_bodies_leave_an_empty_object(self):
        worker = self.start(self.ECHO)
        seen = self.seen(worker, method="POST", content_type="application/octet-stream", body=b"\x00\x01")
        self.assertEqual(seen["body"], {})
        seen = self.seen(worker)
        self.assertEqual(seen["body"], {})
        self.assertEqual(seen["headers"], {"content-type": "text/plain"})

    def test_raw_body_gives_bytes(self):
        worker = self.start(self.ECHO, RAW_BODY="true")
        seen = self.seen(worker, method="POST", content_type="application/json", body=b'{"a": 1}')
        self.assertEqual(seen["body"], {"buffer": "eyJhIjogMX0="})

    def test_urlencoded_body_nests(self):
        worker = self.start(self.ECHO)
        seen = self.seen(
            worker, method="POST", content_type="application/x-www-form-urlencoded",
            body=b"a[b]=1&c=2&c=3&d[]=x&name=Ada+L%C3%B6",
        )
        self.assertEqual(seen["body"], {"a": {"b": "1"}, "c": ["2", "3"], "d": ["x"], "name": "Ada Lö"})

    def test_query_and_headers_reach_the_function(self):
        worker = self.start(self.ECHO)
        seen = self.seen(
            worker, "/sub/path", query="a=1&a=2&b[c]=x%20y&e[1]=q&e[0]=p&flag",
            headers=[("x-multi", "1"), ("x-multi", "2"), ("user-agent", "one"), ("user-agent", "two"),
                     ("cookie", "a=1"), ("cookie", "b=2")],
        )
        self.assertEqual(seen["query"], {"a": ["1", "2"], "b": {"c": "x y"}, "e": ["p", "q"], "flag": ""})
        self.assertEqual(seen["path"], "/sub/path")
        self.assertEqual(seen["headers"]["x-multi"], "1, 2")
        self.assertEqual(seen["headers"]["user-agent"], "one")
        self.assertEqual(seen["headers"]["cookie"], "a=1; b=2")

    def test_bad_json_is_answered_400_by_the_body_parser(self):
        worker = self.start(self.ECHO)
        for bad in (b"{not json", b"42", b'"text"'):
            with self.subTest(body=bad):
                status, headers, body = self.answer(worker, method="POST", content_type="application/json", body=bad)
                self.assertEqual((status, headers), (400, ERROR_PAGE_HEADERS))
                self.assertIn(b"SyntaxError", body)
        status, _, body = self.answer(worker, method="POST", content_type="text/plain; charset=nope", body=b"x")
        self.assertEqual(status, 415)
        self.assertIn(b"unsupported charset", body)

    def test_every_answer_and_error_form(self):
        worker = self.start(self.ANSWERS)
        for path, status, headers, body in self.CASES:
            with self.subTest(path=path):
                self.assertEqual(self.answer(worker, path), (status, headers, body))
        worker.wait_stderr("late")  # the error after the answer is logged

    def test_head_gets_no_body(self):
        worker = self.start(self.ANSWERS)
        self.assertEqual(self.answer(worker, "/string", method="HEAD"), (200, [["Content-Type", HTML]], b""))

    def test_unanswerable_status_is_an_error_frame(self):
        worker = self.start(self.ANSWERS)
        header, _ = self.send(worker, "/bad-status")
        self.assertEqual(header["type"], "error")
        self.assertIn("Invalid status code", header["error"])

    def test_non_async_function_answering_through_context(self):
        source = """
            'use strict'

            module.exports = (event, context) => {
              context
                .status(404)
                .succeed({ message: 'The record requested was not found.' })
            }
        """
        worker = self.start(source)
        answer = self.answer(worker)
        self.assertEqual(answer, (404, [["Content-Type", HTML]], b'{"message":"The record requested was not found."}'))

    def test_synchronous_throw_is_an_error_frame(self):
        # The template's process dies on it, so there is no answer to copy.
        worker = self.start("module.exports = (event, context) => { throw new RangeError('sync') }\n")
        header, _ = self.send(worker)
        self.assertEqual((header["type"], header["error"]), ("error", "RangeError: sync"))
        header, _ = self.send(worker)
        self.assertEqual(header["type"], "error")

    def test_named_export_is_used_when_present(self):
        source = """
            exports.classify = async (event, context) => context.succeed('named')
        """
        worker = self.start(source, handler="handler.classify")
        self.assertEqual(self.answer(worker)[2], b"named")

    def test_module_without_a_function_is_a_load_error(self):
        worker = self.launch("module.exports = { other: () => 1 }\n")
        header, _ = worker.frame()
        self.assertEqual(header["type"], "load_error")
        self.assertIn("neither module.exports nor a default export is a function", header["error"])


# --- kubeless ------------------------------------------------------------------


class KubelessStyleTests(StyleCase):
    STYLE = "kubeless"

    ECHO = """
        module.exports = {
          handler: (event, context) => {
            const req = event.extensions.request
            return {
              data: event.data,
              dataType: Buffer.isBuffer(event.data) ? 'buffer' : typeof event.data,
              eventId: event['event-id'], eventType: event['event-type'],
              eventTime: event['event-time'], eventNamespace: event['event-namespace'],
              context,
              request: { method: req.method, path: req.path, url: req.url, query: req.query,
                         headers: req.headers, agent: req.get('User-Agent') },
            }
          },
        }
    """

    ANSWERS = """
        const { Readable } = require('stream')

        const ANSWERS = {
          '/string': () => 'hi',
          '/object': () => ({ a: [1, null] }),
          '/null': () => null,
          '/undefined': () => undefined,
          '/number': () => 42,
          '/promise': () => new Promise((resolve) => setTimeout(() => resolve('later'), 10)),
          '/custom': (event) => {
            const res = event.extensions.response
            res.status(201)
            res.setHeader('X-Trace', 't1')
            return { created: true }
          },
          '/direct': (event) => {
            event.extensions.response.status(202).send('direct')
            return 'ignored'
          },
          '/stream': (event) => new Promise((resolve) => {
            const res = event.extensions.response
            res.setHeader('Content-Type', 'text/event-stream')
            const stream = Readable.from(['a', 'b', 'c'])
            stream.on('end', resolve)
            stream.pipe(res)
          }),
          '/throw': () => { throw new Error('boom') },
          '/reject': () => Promise.reject(new Error('nope')),
        }

        module.exports = { handler: (event, context) => ANSWERS[event.extensions.request.path](event, context) }
    """

    CORS = ["Access-Control-Allow-Origin", "*"]
    CASES = [
        ("/string", 200, [CORS], b"hi"),
        ("/object", 200, [CORS, ["Content-Type", JSON_UTF8]], b'{"a":[1,null]}'),
        ("/null", 200, [CORS, ["Content-Type", JSON_UTF8]], b"null"),
        ("/undefined", 200, [CORS], b""),
        ("/number", 200, [CORS], b"42"),
        ("/promise", 200, [CORS], b"later"),
        ("/custom", 201, [CORS, ["X-Trace", "t1"], ["Content-Type", JSON_UTF8]], b'{"created":true}'),
        ("/direct", 202, [CORS, ["Content-Type", HTML]], b"direct"),
        ("/stream", 200, [CORS, ["Content-Type", "text/event-stream"]], b"abc"),
        ("/throw", 500, [CORS, ["Content-Type", HTML]], b"Internal Server Error"),
        ("/reject", 500, [CORS, ["Content-Type", HTML]], b"Internal Server Error"),
    ]

    def start_echo(self, **env):
        return self.start(self.ECHO, handler="handler.handler", **env)

    def test_json_data_is_parsed(self):
        worker = self.start_echo()
        status, headers, body = self.answer(
            worker, method="POST", content_type="application/json", body=b'{"features": [1, 2]}'
        )
        self.assertEqual((status, headers), (200, [self.CORS, ["Content-Type", JSON_UTF8]]))
        seen = json.loads(body)
        self.assertEqual((seen["data"], seen["dataType"]), ({"features": [1, 2]}, "object"))

    def test_other_data_is_text(self):
        worker = self.start_echo()
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/octet-stream", None):
            with self.subTest(content_type=content_type):
                seen = self.seen(worker, method="POST", content_type=content_type, body=b"a=1&b=2")
                self.assertEqual((seen["data"], seen["dataType"]), ("a=1&b=2", "string"))

    def test_no_body_gives_empty_object(self):
        seen = self.seen(self.start_echo())
        self.assertEqual((seen["data"], seen["dataType"]), ({}, "object"))

    def test_event_headers_pass_through(self):
        worker = self.start_echo()
        seen = self.seen(worker, method="POST", content_type="text/plain", body=b"x", headers=[
            ("event-id", "abc"), ("event-type", "t"), ("event-time", "2020-01-01T00:00:00Z"), ("event-namespace", "ns"),
        ])
        self.assertEqual(
            [seen["eventId"], seen["eventType"], seen["eventTime"], seen["eventNamespace"]],
            ["abc", "t", "2020-01-01T00:00:00Z", "ns"],
        )

    def test_event_defaults_are_what_kubeless_call_sends(self):
        worker = self.start_echo()
        seen = self.seen(worker, method="POST", content_type="application/json", body=b'{"a": 1}')
        self.assertRegex(seen["eventId"], r"^[0-9a-f]{11}$")
        self.assertRegex(seen["eventTime"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual((seen["eventType"], seen["eventNamespace"]), ("application/json", "cli.kubeless.io"))
        seen = self.seen(worker, method="POST", content_type="text/plain", body=b"words")
        self.assertEqual(seen["eventType"], "application/x-www-form-urlencoded")
        self.assertNotIn("eventType", self.seen(worker))

    def test_context_describes_the_function(self):
        seen = self.seen(self.start_echo(SEDGE_TIMEOUT="7", SEDGE_MEMORY_LIMIT="134217728"))
        runtime = seen["context"].pop("runtime")
        self.assertRegex(runtime, r"^nodejs\d+$")
        self.assertEqual(seen["context"], {"function-name": "test-fn", "timeout": 7, "memory-limit": "134217728"})
        self.assertNotIn("memory-limit", self.seen(self.start_echo())["context"])

    def test_request_reaches_the_function(self):
        worker = self.start_echo()
        seen = self.seen(
            worker, "/sub", method="PUT", query="a=1&a=2&b[c]=3",
            headers=[("user-agent", "curl"), ("x-multi", "1"), ("x-multi", "2")],
        )
        request = seen["request"]
        self.assertEqual((request["method"], request["path"], request["url"]), ("PUT", "/sub", "/sub?a=1&a=2&b[c]=3"))
        self.assertEqual(request["query"], {"a": ["1", "2"], "b": {"c": "3"}})
        self.assertEqual(request["headers"], {"user-agent": "curl", "x-multi": "1, 2"})
        self.assertEqual(request["agent"], "curl")

    def test_every_answer_and_error_form(self):
        worker = self.start(self.ANSWERS, handler="handler.handler")
        for path, status, headers, body in self.CASES:
            with self.subTest(path=path):
                self.assertEqual(self.answer(worker, path), (status, headers, body))
        worker.wait_stderr("Function failed to execute: Error: boom")

    def test_bad_json_data_is_a_500(self):
        worker = self.start_echo()
        answer = self.answer(worker, method="POST", content_type="application/json", body=b"{oops")
        self.assertEqual(answer, (500, [self.CORS, ["Content-Type", HTML]], b"Internal Server Error"))

    def test_options_is_answered_as_cors_preflight(self):
        worker = self.start("module.exports = { handler: () => { throw new Error('not called') } }\n",
                            handler="handler.handler")
        answer = self.answer(worker, method="OPTIONS", headers=[
            ("access-control-request-method", "POST"), ("access-control-request-headers", "content-type"),
        ])
        self.assertEqual(answer, (200, [
            self.CORS, ["Access-Control-Allow-Methods", "POST"], ["Access-Control-Allow-Headers", "content-type"],
        ], b""))

    def test_multipart_body_is_left_as_a_stream(self):
        source = """
            module.exports = {
              handler: async (event) => {
                const chunks = []
                for await (const chunk of event.extensions.request) chunks.push(chunk)
                return { data: event.data, streamed: Buffer.concat(chunks).toString(),
                         multipart: event.extensions.request.is('multipart/*') }
              },
            }
        """
        worker = self.start(source, handler="handler.handler")
        payload = b'--xx\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--xx--\r\n'
        seen = self.seen(worker, method="POST", content_type="multipart/form-data; boundary=xx", body=payload)
        self.assertEqual(seen, {"data": {}, "streamed": payload.decode(), "multipart": "multipart/form-data"})

    def test_function_module_is_used_whatever_the_export_name(self):
        worker = self.start("module.exports = (event) => 'whole module'\n", handler="handler.anything")
        self.assertEqual(self.answer(worker)[2], b"whole module")


# --- fission -------------------------------------------------------------------


class FissionStyleTests(StyleCase):
    STYLE = "fission"

    ECHO = """
        module.exports = async function(context) {
          const req = context.request
          const body = Buffer.isBuffer(req.body) ? { buffer: req.body.toString() } : req.body
          return {
            status: 200,
            body: { body, method: req.method, path: req.path, url: req.url, query: req.query,
                    headers: req.headers, hasResponse: typeof context.response.send === 'function' },
          }
        }
    """

    ANSWERS = """
        const { Readable } = require('stream')

        const ANSWERS = {
          '/object': () => ({ status: 201, body: { ok: true }, headers: { 'X-Trace': 't1' } }),
          '/string': () => ({ status: 200, body: 'hello' }),
          '/typed': () => ({ status: 200, body: 'plain', headers: { 'Content-Type': 'text/plain' } }),
          '/buffer': () => ({ status: 200, body: Buffer.from([1, 2]) }),
          '/no-body': () => ({ status: 202 }),
          '/stream': () => ({ status: 200, body: Readable.from(['x', 'y']) }),
          '/direct': (context) => { context.response.status(203).send('direct'); return {} },
          '/undefined': () => undefined,
          '/throw': () => { throw new Error('boom') },
          '/reject': () => Promise.reject(new Error('nope')),
        }

        module.exports = async (context) => ANSWERS[context.request.path](context)
    """

    CASES = [
        ("/object", 201, [["X-Trace", "t1"], ["Content-Type", JSON_UTF8]], b'{"ok":true}'),
        ("/string", 200, [["Content-Type", HTML]], b"hello"),
        ("/typed", 200, [["Content-Type", "text/plain; charset=utf-8"]], b"plain"),
        ("/buffer", 200, [["Content-Type", "application/octet-stream"]], b"\x01\x02"),
        ("/no-body", 202, [], b""),
        ("/stream", 200, [], b"xy"),
        ("/direct", 203, [["Content-Type", HTML]], b"direct"),
        ("/undefined", 500, [["Content-Type", HTML]], b"Internal server error"),
        ("/throw", 500, [["Content-Type", HTML]], b"Internal server error"),
        ("/reject", 500, [["Content-Type", HTML]], b"Internal server error"),
    ]

    def test_json_body_is_parsed(self):
        worker = self.start(self.ECHO)
        status, headers, body = self.answer(
            worker, "/predict", method="POST", content_type="application/json", body=b'{"features": [3]}'
        )
        self.assertEqual((status, headers), (200, [["Content-Type", JSON_UTF8]]))
        seen = json.loads(body)
        self.assertEqual(seen["body"], {"features": [3]})
        self.assertTrue(seen["hasResponse"])

    def test_bodies_by_content_type(self):
        worker = self.start(self.ECHO)
        cases = [
            ("text/plain", b"words", "words"),
            ("application/octet-stream", b"\x01", {"buffer": "\x01"}),
            ("application/x-www-form-urlencoded", b"a[b]=1&c=2&c=3", {"a[b]": "1", "c": ["2", "3"]}),
            ("image/png", b"\x89PNG", {}),
            (None, b"untyped", {}),
        ]
        for content_type, sent, body in cases:
            with self.subTest(content_type=content_type):
                self.assertEqual(self.seen(worker, method="POST", content_type=content_type, body=sent)["body"], body)

    def test_query_and_headers_reach_the_function(self):
        worker = self.start(self.ECHO)
        seen = self.seen(worker, "/x", query="a=1&a=2&b[c]=3", headers=[("x-multi", "1"), ("x-multi", "2")])
        self.assertEqual(seen["query"], {"a": ["1", "2"], "b": {"c": "3"}})
        self.assertEqual(seen["headers"], {"x-multi": "1, 2"})
        self.assertEqual((seen["method"], seen["path"], seen["url"]), ("GET", "/x", "/x?a=1&a=2&b[c]=3"))

    def test_every_answer_and_error_form(self):
        worker = self.start(self.ANSWERS)
        for path, status, headers, body in self.CASES:
            with self.subTest(path=path):
                self.assertEqual(self.answer(worker, path), (status, headers, body))
        worker.wait_stderr("Function error: Error: boom")

    def test_bad_json_is_answered_400(self):
        worker = self.start(self.ECHO)
        status, headers, body = self.answer(worker, method="POST", content_type="application/json", body=b"{x")
        self.assertEqual((status, headers), (400, ERROR_PAGE_HEADERS))
        self.assertIn(b"SyntaxError", body)

    def test_callback_form(self):
        source = """
            module.exports = (context, callback) => {
              if (context.request.path === '/throw') throw new Error('sync')
              callback(200, 'Hello, ' + context.request.query.name, { 'X-Form': 'callback' })
            }
        """
        worker = self.start(source)
        answer = self.answer(worker, query="name=Ada")
        self.assertEqual(answer, (200, [["X-Form", "callback"], ["Content-Type", HTML]], b"Hello, Ada"))
        self.assertEqual(self.answer(worker, "/throw"), (500, [["Content-Type", HTML]], b"Internal server error"))

    def test_callback_form_answering_through_the_response(self):
        source = """
            module.exports = (context, callback) => {
              setTimeout(() => context.response.status(418).json({ teapot: true }), 10)
            }
        """
        worker = self.start(source)
        self.assertEqual(self.answer(worker), (418, [["Content-Type", JSON_UTF8]], b'{"teapot":true}'))

    def test_async_callback_form_rejection_is_an_error_frame(self):
        # Fission ignores what a two-argument function returns, so its
        # rejection is never answered.
        worker = self.start("module.exports = async (context, callback) => { throw new Error('lost') }\n")
        header, _ = self.send(worker)
        self.assertEqual((header["type"], header["error"]), ("error", "Error: lost"))

    def test_no_status_sends_nothing(self):
        worker = self.start("module.exports = async (context) => ({ body: 'no status' })\n")
        worker.invoke(1, "/")
        worker.wait_stderr("gave no status")
        time.sleep(0.2)
        self.assertTrue(worker.frames.empty())

    def test_zero_argument_function(self):
        worker = self.start("module.exports = async () => ({ status: 200, body: 'zero' })\n")
        self.assertEqual(self.answer(worker)[2], b"zero")

    def test_synchronous_throw_gets_express_error_page(self):
        source = """
            module.exports = function(context) {
              const err = new Error('no <model>')
              if (context.request.path === '/404') err.status = 404
              throw err
            }
        """
        worker = self.start(source)
        status, headers, body = self.answer(worker)
        self.assertEqual((status, headers), (500, ERROR_PAGE_HEADERS))
        self.assertIn(b"Error: no &lt;model&gt;", body)
        self.assertEqual(self.answer(worker, "/404")[0], 404)

    def test_es_module_default_export(self):
        (self.dir / "package.json").write_text('{"type": "module"}\n')
        source = """
            export default async function (context) {
              return { status: 200, body: 'esm default' };
            }
        """
        worker = self.start(source, handler="hello.handle", filename="hello.js")
        self.assertEqual(self.answer(worker)[2], b"esm default")

    def test_named_entry_point(self):
        source = """
            module.exports.entry1 = async (context) => ({ status: 200, body: 'one' })
            module.exports.entry2 = async (context) => ({ status: 200, body: 'two' })
        """
        worker = self.start(source, handler="multi.entry2", filename="multi.js")
        self.assertEqual(self.answer(worker)[2], b"two")


# --- the examples --------------------------------------------------------------


class StyleExampleTests(unittest.TestCase):
    SETOSA = [5.1, 3.5, 1.4, 0.2]
    VERSICOLOR = [5.0, 2.0, 3.5, 1.0]
    VIRGINICA = [6.9, 3.2, 5.7, 2.3]

    def serve(self, name, style):
        folder = EXAMPLES / name
        manifest = tomllib.loads((folder / "sedge.toml").read_text())
        self.assertEqual(
            (manifest["name"], manifest["runtime"], manifest["style"], manifest["limits"]["timeout"],
             manifest["scale"]["max"]),
            (name, "node", style, "10s", 2),
        )
        env = dict(os.environ, SEDGE_FUNCTION=name, SEDGE_STYLE=style, SEDGE_TIMEOUT="10", SEDGE_MEMORY_LIMIT="")
        worker = Worker(["node", str(NODE_SHIM), str(folder), manifest["handler"]], folder, env)
        self.addCleanup(worker.kill)
        self.assertEqual(worker.frame()[0]["type"], "ready", worker.stderr())
        return worker

    def post(self, worker, payload):
        body = json.dumps(payload).encode()
        header, answer = worker.call(
            "/", method="POST", body=body,
            headers=[("content-type", "application/json"), ("content-length", str(len(body)))],
        )
        self.assertEqual(header["type"], "response", header)
        return header["status"], json.loads(answer)

    def check_classifier(self, worker):
        for features, label in ((self.SETOSA, "setosa"), (self.VERSICOLOR, "versicolor"), (self.VIRGINICA, "virginica")):
            with self.subTest(label=label):
                status, answer = self.post(worker, {"features": features})
                self.assertEqual((status, answer["class"]), (200, label), answer)
        status, answer = self.post(worker, {"features": [1, 2]})
        self.assertEqual(status, 400)
        self.assertIn("error", answer)

    def test_openfaas_node(self):
        worker = self.serve("openfaas-node", "openfaas")
        self.check_classifier(worker)
        status, answer = self.post(worker, {"features": self.SETOSA})
        self.assertAlmostEqual(sum(answer["probabilities"].values()), 1.0, places=3)

    def test_kubeless_node(self):
        worker = self.serve("kubeless-node", "kubeless")
        self.check_classifier(worker)
        _, answer = self.post(worker, {"features": self.SETOSA})
        self.assertEqual(len(answer["neighbours"]), 5)

    def test_fission_node(self):
        worker = self.serve("fission-node", "fission")
        self.check_classifier(worker)
        _, answer = self.post(worker, {"features": self.VIRGINICA})
        self.assertAlmostEqual(sum(answer["probabilities"].values()), 1.0, places=3)
        self.assertEqual(len(answer["standardised"]), 4)


if __name__ == "__main__":
    unittest.main()
