# The framework styles of sedge's Python runtime shim: OpenFaaS, Kubeless,
# Fission and funcX call shapes (docs/styles-python.md lists every rule).
#
# Not a module of its own: `sedge_worker.py` runs this file in its own
# namespace, and only when a function uses one of these styles, so functions
# of the `sedge` style never pay to compile it. Names such as `Style`,
# `Request`, `sedge_answer`, `user_traceback` and `sys` come from the shim.

import io
import time
from urllib.parse import quote


def log_exception(exc):
    """Writes the handler's traceback to the function's log, as the
    frameworks' servers do before answering with an error page."""
    sys.stderr.write(user_traceback(exc))
    sys.stderr.flush()


def status_code(value):
    """A status given as a number or as a status line ("404 Not Found")."""
    if isinstance(value, str):
        code = value.split(None, 1)[0] if value.strip() else ""
        value = int(code) if code.isdigit() else value
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
        raise ValueError(f"status must be a whole number from 100 to 599, not {value!r}")
    return value


class Headers:
    """Request headers the way WSGI frameworks show them: named like
    `Content-Type`, looked up in any case, repeated headers joined by ", "."""

    # What a lookup of a missing name raises.
    missing = KeyError

    def __init__(self, joined):
        self._values = joined  # Request.headers: lower-case names

    def __getitem__(self, name):
        try:
            return self._values[name.lower()]
        except (KeyError, AttributeError):
            raise self.missing(name) from None

    def get(self, name, default=None, type=None):
        value = self._values.get(name.lower()) if isinstance(name, str) else None
        if value is None:
            return default
        if type is None:
            return value
        try:
            return type(value)
        except ValueError:
            return default

    def __contains__(self, name):
        return isinstance(name, str) and name.lower() in self._values

    def __len__(self):
        return len(self._values)

    def keys(self):
        return [name.title() for name in self._values]

    def values(self):
        return list(self._values.values())

    def items(self):
        return [(name.title(), value) for name, value in self._values.items()]

    def __iter__(self):
        return iter(self.keys())

    def __repr__(self):
        return f"{type(self).__name__}({self.items()!r})"


# --- the Flask side, shared by openfaas and fission

FLASK_HTML = "text/html; charset=utf-8"


def werkzeug_page(status, title, text):
    """The HTML werkzeug answers an HTTP error with."""
    page = f"<!doctype html>\n<html lang=en>\n<title>{status} {title}</title>\n<h1>{title}</h1>\n<p>{text}</p>\n"
    return status, [["Content-Type", FLASK_HTML]], page.encode("utf-8")


FLASK_500 = werkzeug_page(
    500,
    "Internal Server Error",
    "The server encountered an internal error and was unable to complete your request. "
    "Either the server is overloaded or there is an error in the application.",
)
FLASK_400 = werkzeug_page(
    400, "Bad Request", "The browser (or proxy) sent a request that this server could not understand."
)


class BadRequestKeyError(KeyError):
    """A name missing from the event's headers or query: Flask answers 400,
    as werkzeug's exception of the same name makes it."""


class WerkzeugHeaders(Headers):
    """`request.headers` of Flask: iterating gives (name, value) pairs."""

    missing = BadRequestKeyError

    def __iter__(self):
        return iter(self.items())

    def getlist(self, name):
        return [self._values[name.lower()]] if name in self else []


class QueryArgs(dict):
    """`request.args` of Flask: the first value of each name, getlist() for
    all of them, a missing name is a bad request."""

    def __init__(self, lists):
        super().__init__((name, values[0]) for name, values in lists.items())
        self._lists = lists

    def __missing__(self, name):
        raise BadRequestKeyError(name)

    def get(self, name, default=None, type=None):
        if name not in self:
            return default
        if type is None:
            return self[name]
        try:
            return type(self[name])
        except ValueError:
            return default

    def getlist(self, name, type=None):
        values = self._lists.get(name, [])
        return list(values) if type is None else [type(value) for value in values]

    def lists(self):
        return [(name, list(values)) for name, values in self._lists.items()]

    def to_dict(self, flat=True):
        return dict(self) if flat else dict(self.lists())


def flask_json_default(value):
    """What Flask's JSON provider makes of values json cannot encode. Only
    a module already imported can have made such a value, so this looks
    them up instead of importing anything."""
    modules = sys.modules
    datetime = modules.get("datetime")
    if datetime is not None and isinstance(value, datetime.date):
        # An HTTP date, in UTC; a date without a time is its midnight.
        import email.utils

        utc = datetime.timezone.utc
        if not isinstance(value, datetime.datetime):
            value = datetime.datetime.combine(value, datetime.time(), tzinfo=utc)
        value = value.replace(tzinfo=utc) if value.tzinfo is None else value.astimezone(utc)
        return email.utils.format_datetime(value, usegmt=True)
    for module_name, class_name in (("decimal", "Decimal"), ("uuid", "UUID")):
        module = modules.get(module_name)
        if module is not None and isinstance(value, getattr(module, class_name)):
            return str(value)
    dataclasses = modules.get("dataclasses")
    if dataclasses is not None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "__html__"):
        return str(value.__html__())
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def flask_json(value):
    """Flask's jsonify outside debug mode: keys sorted, compact, ASCII, a
    trailing newline."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=flask_json_default)
    return (text + "\n").encode("ascii")


def flask_answer(value):
    """What Flask's make_response makes of a view's return value, without
    Flask: the python3-http and python3-flask templates hand their function's
    result to it."""
    status = headers = None
    if isinstance(value, tuple):
        if len(value) == 3:
            value, status, headers = value
        elif len(value) == 2:
            if isinstance(value[1], (dict, tuple, list)):
                value, headers = value
            else:
                value, status = value
        else:
            raise TypeError(
                "The view function did not return a valid response tuple. The tuple must have the form "
                "(body, status, headers), (body, status), or (body, headers)."
            )
    if value is None:
        raise TypeError("The view function did not return a valid response: it returned None.")
    if hasattr(value, "get_data") and hasattr(value, "status_code"):
        # A Response of Flask or werkzeug, from a function that imports them.
        pairs = [[str(name), str(v)] for name, v in value.headers.items()]
        body, content_type = value.get_data(), None
        if status is None:
            status = value.status_code
    elif isinstance(value, (dict, list)):
        body, content_type, pairs = flask_json(value), JSON, []
    else:
        if isinstance(value, (str, bytes, bytearray)):
            parts = [value]
        elif hasattr(value, "__next__"):  # Flask streams any iterator
            parts = list(value)
        else:
            raise TypeError(
                "The view function did not return a valid response. The return type must be a string, dict, "
                f"list, tuple with headers or status, Response instance, or WSGI callable, but it was a "
                f"{type(value).__name__}."
            )
        body = b"".join(part.encode("utf-8") if isinstance(part, str) else bytes(part) for part in parts)
        content_type = FLASK_HTML
        pairs = []
    if headers:
        given = []
        for name, v in headers.items() if isinstance(headers, dict) else headers:
            values = v if isinstance(v, (list, tuple, set)) else [v]
            given.extend([str(name), str(each)] for each in values)
        names = {name.lower() for name, _ in given}
        # Headers given replace those of the same name.
        pairs = [pair for pair in pairs if pair[0].lower() not in names] + given
    if content_type and not any(name.lower() == "content-type" for name, _ in pairs):
        pairs.insert(0, ["Content-Type", content_type])
    return status_code(200 if status is None else status), pairs, body


# --- openfaas

def openfaas_style(handler):
    """The python3-http template calls `handle(event, context)`; the classic
    python3 template and python3-flask call `handle(req)` with the body. The
    handler's parameters tell which."""
    import inspect

    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError) as e:
        raise LoadError(f"cannot read the parameters of the openfaas handler {handler!r}: {e}") from None
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return OPENFAAS_HTTP
    if len(positional) == 1:
        return openfaas_classic_style()
    raise LoadError(
        "an openfaas handler takes (req), as the python3 and python3-flask templates call it, "
        "or (event, context), as python3-http does; this one takes no positional parameter"
    )


class OpenFaasEvent:
    """The `event` of the python3-http template."""

    __slots__ = ("body", "headers", "method", "query", "path")

    def __init__(self, request):
        self.body = request.body
        self.headers = WerkzeugHeaders(request.headers)
        self.method = request.method
        self.query = QueryArgs(request.query_all)
        self.path = request.path


class OpenFaasContext:
    """The `context` of the python3-http template."""

    def __init__(self):
        self.hostname = os.getenv("HOSTNAME", "localhost")


def openfaas_http_answer(value, request):
    if value is None:
        return flask_answer("")
    if type(value) is dict:
        body = value.get("body", "")
        # The template sends a dict body as JSON and any other body as its
        # str(); bytes are sent as they are, their str() being a repr.
        if type(body) is not dict and not isinstance(body, (bytes, bytearray)):
            body = str(body)
        return flask_answer((body, value.get("statusCode", 200), value.get("headers") or []))
    return flask_answer(value)


def openfaas_http_fail(exc, request):
    if isinstance(exc, BadRequestKeyError):
        return FLASK_400
    log_exception(exc)
    return FLASK_500


OPENFAAS_HTTP = Style(
    call=lambda handler, request: handler(OpenFaasEvent(request), OpenFaasContext()),
    answer=openfaas_http_answer,
    fail=openfaas_http_fail,
)


def openfaas_classic_style():
    # python3-flask passes bytes instead of text when RAW_BODY is true; the
    # classic watchdog answers with the content type its `content_type`
    # names, else with the request's.
    raw_env = os.environ.get("RAW_BODY", "")
    raw_body = raw_env.lower() == "true" or raw_env == "1"
    forced_type = os.environ.get("content_type", "")

    def call(handler, request):
        return handler(request.body if raw_body else request.body.decode("utf-8", errors="replace"))

    def answer(value, request):
        # Only python3-flask gives these a meaning (the classic template
        # would print their repr), so they are answered its way.
        if isinstance(value, (tuple, dict, list, bytes, bytearray)):
            return flask_answer(value)
        # The classic template print()s what the function returns.
        text = "" if value is None else f"{value}\n"
        content_type = forced_type or request.headers.get("content-type") or TEXT
        return 200, [["Content-Type", content_type]], text.encode("utf-8")

    def fail(exc, request):
        # The process exits 1 with the traceback on stderr; the watchdog
        # answers 500 with the exit status and the output it combined.
        log_exception(exc)
        return 500, [["Content-Type", TEXT]], f"exit status 1\n{user_traceback(exc)}".encode("utf-8")

    return Style(call, answer, fail)


# --- kubeless

BOTTLE_HTML = "text/html; charset=UTF-8"
EVENT_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


class FormsDict(dict):
    """A query string or form as bottle shows it: the last value of each
    name, getall() for all of them, and attributes that answer "" for a
    missing name."""

    def __init__(self, lists):
        super().__init__((name, values[-1]) for name, values in lists.items())
        self._lists = lists

    def get(self, name, default=None, index=-1, type=None):
        try:
            value = self._lists[name][index]
            return type(value) if type else value
        except Exception:  # bottle answers the default whatever went wrong
            return default

    getone = get

    def getall(self, name):
        return list(self._lists.get(name, []))

    getlist = getall

    def getunicode(self, name, default=None, encoding=None):
        return self.get(name, default)

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self.get(name, "")


class BottleRequest:
    """What kubeless passes as event["extensions"]["request"]: the parts of
    bottle's request that need no WSGI server."""

    def __init__(self, request):
        self.method = request.method
        self.path = self.fullpath = request.path
        self.query_string = request.query_string
        self.query = self.GET = FormsDict(request.query_all)
        self.headers = Headers(request.headers)
        self.content_type = request.headers.get("content-type", "").lower()
        self.content_length = len(request.body)
        self._body = request.body
        headers = request.headers
        host = headers.get("x-forwarded-host") or headers.get("host") or "localhost"
        scheme = headers.get("x-forwarded-proto", "http")
        self.url = f"{scheme}://{host}{quote(request.path)}" + (f"?{request.query_string}" if request.query_string else "")

    def get_header(self, name, default=None):
        return self.headers.get(name, default)

    @property
    def body(self):
        return io.BytesIO(self._body)

    @property
    def json(self):
        if self.content_type.split(";")[0] != "application/json" or not self._body:
            return None
        return json.loads(self._body)

    @property
    def forms(self):
        # bottle reads any body that is not multipart as a urlencoded form.
        if self.content_type.startswith("multipart/"):
            return FormsDict({})
        return FormsDict(parse_qs(self._body.decode("utf-8", errors="replace"), keep_blank_values=True))

    POST = forms

    @property
    def params(self):
        lists = {name: list(values) for name, values in self.query._lists.items()}
        for name, values in self.forms._lists.items():
            lists.setdefault(name, []).extend(values)
        return FormsDict(lists)

    @property
    def cookies(self):
        from http.cookies import SimpleCookie

        jar = SimpleCookie(self.headers.get("cookie", ""))
        return FormsDict({name: [morsel.value] for name, morsel in jar.items()})

    def get_cookie(self, name, default=None):
        return self.cookies.get(name, default)

    def __repr__(self):
        return f"<LocalRequest: {self.method} {self.url}>"


class BottleError(Exception):
    """An answer bottle gives as an error page."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


BOTTLE_ERROR_PAGE = """
    <!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">
    <html>
        <head>
            <title>Error: {status}</title>
            <style type="text/css">
              html {{background-color: #eee; font-family: sans;}}
              body {{background-color: #fff; border: 1px solid #ddd;
                    padding: 15px; margin: 15px;}}
              pre {{background-color: #eee; border: 1px solid #ddd; padding: 5px;}}
            </style>
        </head>
        <body>
            <h1>Error: {status}</h1>
            <p>Sorry, the requested URL <tt>{url}</tt>
               caused an error:</p>
            <pre>{message}</pre>
        </body>
    </html>
"""


def bottle_escape(text):
    """HTML escaping as bottle's templates do it."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace('"', "&quot;").replace("'", "&#039;")


def bottle_error_page(status, message, request):
    """bottle's error page (outside debug mode), which kubeless answers
    with when the function raised. `status` is a code or a status line."""
    if isinstance(status, int):
        from http import HTTPStatus

        status = f"{status} {HTTPStatus(status).phrase}"
    page = BOTTLE_ERROR_PAGE.format(
        status=bottle_escape(status), url=bottle_escape(repr(BottleRequest(request).url)), message=bottle_escape(message)
    )
    return page.encode("utf-8")


def bottle_body(value):
    """The bytes and content type of a value a kubeless function returned:
    dicts go through bottle's JSON plugin, the rest through bottle's casts."""
    if isinstance(value, dict):
        return json.dumps(value).encode("utf-8"), JSON
    if not value:
        return b"", BOTTLE_HTML
    if isinstance(value, str):
        return value.encode("utf-8"), BOTTLE_HTML
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), BOTTLE_HTML
    try:
        parts = list(value)
    except TypeError:
        raise BottleError(500, "Unhandled exception") from None
    first = next((part for part in parts if part), None)
    if first is None:
        return b"", BOTTLE_HTML
    if isinstance(first, (str, bytes)):
        joined = first[0:0].join(parts)
        return (joined.encode("utf-8") if isinstance(joined, str) else joined), BOTTLE_HTML
    raise BottleError(500, f"Unsupported response type: {type(first)}")


def bottle_response(value, request):
    """The answer for a bottle HTTPResponse or HTTPError, which a function
    that imports bottle may return or raise; None for anything else. Only a
    function that imported bottle can have made one, so bottle is looked up,
    not imported."""
    bottle = sys.modules.get("bottle")
    if bottle is None or not isinstance(value, bottle.HTTPResponse):
        return None
    headers = [[name, str(v)] for name, v in value.headerlist]
    if isinstance(value, bottle.HTTPError):
        headers = [pair for pair in headers if pair[0].lower() != "content-type"]
        return value.status_code, [["Content-Type", BOTTLE_HTML], *headers], bottle_error_page(
            value.status_line, value.body, request
        )
    body, content_type = bottle_body(value.body)
    if content_type == JSON:
        headers = [pair for pair in headers if pair[0].lower() != "content-type"] + [["Content-Type", JSON]]
    return value.status_code, headers, body


def kubeless_style(_handler):
    # kubeless's Python runtime gives a float timeout and a runtime named
    # like python3.8; the memory limit stays the text it was given.
    context = {
        "function-name": os.environ.get("SEDGE_FUNCTION", ""),
        "timeout": float(os.environ.get("SEDGE_TIMEOUT") or 180),
        "runtime": f"python{sys.version_info[0]}.{sys.version_info[1]}",
        "memory-limit": os.environ.get("SEDGE_MEMORY_LIMIT") or None,
    }

    def call(handler, request):
        headers = request.headers
        data = request.body
        # Only this exact content type is decoded: the runtime compares the
        # header with "application/json" as it is.
        if headers.get("content-type") == "application/json":
            data = json.loads(data) if data else None
        event = {
            "data": data,
            # Headers set by kubeless's triggers; a direct call gets what
            # `kubeless function call` would have sent.
            "event-id": headers.get("event-id") or "".join(EVENT_ID_ALPHABET[b % len(EVENT_ID_ALPHABET)] for b in os.urandom(11)),
            "event-type": headers.get("event-type") or headers.get("content-type"),
            "event-time": headers.get("event-time") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "event-namespace": headers.get("event-namespace") or "sedge",
            "extensions": {"request": BottleRequest(request)},
        }
        return handler(event, dict(context))

    def answer(value, request):
        answered = bottle_response(value, request)
        if answered is not None:
            return answered
        body, content_type = bottle_body(value)
        return 200, [["Content-Type", content_type]], body

    def fail(exc, request):
        answered = bottle_response(exc, request)
        if answered is not None:  # a raised HTTPResponse is the answer
            return answered
        if isinstance(exc, BottleError):
            status, message = exc.status, exc.message
        else:
            log_exception(exc)
            status, message = 500, "Internal Server Error"
        return status, [["Content-Type", BOTTLE_HTML]], bottle_error_page(status, message, request)

    return Style(call, answer, fail)


# --- fission


def wsgi_environ(request):
    """The WSGI environ a server would have made for the request. Built by
    hand: werkzeug's EnvironBuilder (test_request_context) costs several
    times more than the function call itself."""
    body = request.body
    environ = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        # WSGI carries the path as latin-1 code points of its raw bytes.
        "PATH_INFO": request.path.encode("utf-8").decode("latin-1"),
        "QUERY_STRING": request.query_string,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in request.headers.items():
        # The body is whole here, so the framing headers would mislead werkzeug.
        if name in ("content-length", "transfer-encoding"):
            continue
        key = name.upper().replace("-", "_")
        if key != "CONTENT_TYPE":
            key = "HTTP_" + key
        environ[key] = value
    return environ


def fission_style(_handler):
    """fission's Python environment is a Flask app whose view calls the
    function's `main()`: here a real Flask request context is built for each
    invocation, so everything of `flask.request` works."""
    try:
        import flask
        from werkzeug.exceptions import HTTPException
    except ImportError as e:
        raise LoadError(
            f'style "fission" needs Flask, which fission\'s Python environment provides: {summary(e)}. '
            "Add flask to the function's requirements."
        ) from None
    app = flask.Flask(os.environ.get("SEDGE_FUNCTION") or "fission", root_path=os.getcwd())

    def call(handler, request):
        with app.request_context(wsgi_environ(request)):
            try:
                response = app.make_response(handler())
            except HTTPException as e:  # abort(404) and the like
                response = e.get_response()
            except Exception as e:
                # Logs the traceback and answers Flask's 500 page.
                response = app.handle_exception(e)
            return response.status_code, [[name, value] for name, value in response.headers.items()], response.get_data()

    return Style(call, answer=lambda answered, request: answered)


# --- funcx


class BadCall(Exception):
    """The body does not say how to call the function."""


FUNCX_BODY = 'a JSON object like {"args": [...], "kwargs": {...}} (both optional)'


def funcx_call(handler, request):
    if not request.body.strip():
        return handler()
    try:
        payload = json.loads(request.body)
    except ValueError as e:
        raise BadCall(f"the body must be {FUNCX_BODY}; it is not JSON: {e}") from None
    if not isinstance(payload, dict):
        raise BadCall(f"the body must be {FUNCX_BODY}, not a JSON {type(payload).__name__}")
    unknown = sorted(set(payload) - {"args", "kwargs"})
    if unknown:
        raise BadCall(f"the body must be {FUNCX_BODY}; unknown field(s): {', '.join(unknown)}")
    args, kwargs = payload.get("args", []), payload.get("kwargs", {})
    if not isinstance(args, list):
        raise BadCall(f'"args" must be a JSON array, not {json.dumps(args)[:100]}')
    if not isinstance(kwargs, dict):
        raise BadCall(f'"kwargs" must be a JSON object, not {json.dumps(kwargs)[:100]}')
    return handler(*args, **kwargs)


def plain_json_default(value):
    """numpy arrays and scalars, which ML functions often return, as lists
    and numbers."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"the result has no JSON form: {type(value).__name__} is not JSON serializable")


def funcx_answer(value, request):
    body = json.dumps({"result": value}, allow_nan=False, default=plain_json_default)
    return 200, [["content-type", JSON]], body.encode("utf-8")


def funcx_fail(exc, request):
    if isinstance(exc, BadCall):
        status, answer = 400, {"error": str(exc)}
    else:
        log_exception(exc)
        # The traceback lets a task's caller see where it failed, as funcX's
        # clients show the remote traceback.
        status, answer = 500, {"exception": type(exc).__name__, "message": str(exc), "traceback": user_traceback(exc)}
    return status, [["content-type", JSON]], json.dumps(answer).encode("utf-8")


FUNCX = Style(call=funcx_call, answer=funcx_answer, fail=funcx_fail)

FRAMEWORK_MAKERS = {
    "openfaas": openfaas_style,
    "kubeless": kubeless_style,
    "fission": fission_style,
    "funcx": lambda handler: FUNCX,
}
