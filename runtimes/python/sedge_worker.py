"""sedge's Python runtime shim.

Run as ``python3 -u sedge_worker.py FUNCTION_DIR HANDLER`` (HANDLER is
``module.function``). It loads the user's module once, then answers the
framed invocations that sedge sends on the channel socket it passes in, as
docs/protocol.md describes.
SEDGE_STYLE says how to call the handler: sedge's own way, or the way of the
framework the code was written for (docs/styles-python.md).
Standard library only (but for the fission style, whose functions bring
Flask, and setproctitle, used when importable): it must run in whatever
Python the function brings.
"""

import importlib
import json
import os
import struct
import sys
import threading
import traceback
import time
import types
from urllib.parse import parse_qs

# Built once: json.dumps with arguments builds a new encoder on every call.
_encode_json = json.JSONEncoder(separators=(",", ":")).encode
_decode_json = json.JSONDecoder().decode

# asyncio, inspect and concurrent.futures are imported only when a function
# needs them: asyncio alone takes longer to import than the interpreter takes
# to start, and every cold start would pay for it.

PREFIX = struct.Struct(">II")
MAX_HEADER = 1024 * 1024
MAX_BODY = 1024 * 1024 * 1024
# Error and trace texts are cut to this so an error frame always fits under
# MAX_HEADER, whatever a handler put in its exception message.
MAX_ERROR_TEXT = 64 * 1024
# Answers up to this size are joined to their frame head and sent in one go.
COALESCE = 64 * 1024

TEXT = "text/plain; charset=utf-8"
BINARY = "application/octet-stream"
JSON = "application/json"

# Frames of these files are how the shim reached the user's code, not part
# of the user's story, and are left out of tracebacks.
SHIM_FILE = os.path.abspath(__file__)
# The framework styles live in sedge_styles.py beside this file and are
# compiled only when a function uses one, so functions of the sedge style do
# not pay for them at every cold start.
STYLES_FILE = os.path.join(os.path.dirname(SHIM_FILE), "sedge_styles.py")
PLUMBING_FILES = (SHIM_FILE, STYLES_FILE, importlib.__file__)
# Where asyncio lives (the standard library), found without importing it.
ASYNCIO_DIR = os.path.join(os.path.dirname(os.__file__), "asyncio") + os.sep


class ProtocolError(Exception):
    """sedge sent something that is not a valid frame."""


class LoadError(Exception):
    """The worker cannot serve: its text becomes the `load_error` frame."""


class Request:
    """One invocation as the handler sees it (the `sedge` call shape)."""

    def __init__(self, method="GET", path="/", query_string="", headers=(), body=b""):
        self.method = method
        self.path = path
        self.query_string = query_string
        self.query_all = parse_qs(query_string, keep_blank_values=True) if query_string else {}
        self.query = {key: values[0] for key, values in self.query_all.items()}
        pairs = headers.items() if isinstance(headers, dict) else headers
        joined = {}
        for name, value in pairs:
            name = name.lower()
            joined[name] = f"{joined[name]}, {value}" if name in joined else value
        self.headers = joined
        self.body = bytes(body)

    @property
    def text(self):
        """The body as UTF-8; bytes that are not UTF-8 become U+FFFD."""
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        """The body parsed as JSON; raises ValueError when it is not JSON."""
        return json.loads(self.body)

    def __repr__(self):
        return f"<sedge.Request {self.method} {self.path} ({len(self.body)} bytes)>"


class Response:
    """An answer with its own status and headers; the body is converted like
    a plain return value."""

    def __init__(self, body=None, status=200, headers=None):
        self.body = body
        self.status = status
        self.headers = headers if headers is not None else {}

    def __repr__(self):
        return f"<sedge.Response {self.status}>"


def install_sedge_module():
    """Makes `import sedge` work in user code without anything installed."""
    module = types.ModuleType("sedge", "Types for sedge functions, provided by the runtime shim.")
    for cls in (Request, Response, InferError):
        cls.__module__ = "sedge"
        setattr(module, cls.__name__, cls)
    module.infer = infer
    sys.modules["sedge"] = module


# --- answers ----------------------------------------------------------------


def body_and_type(value):
    """The bytes and default content type of a returned value, by its kind;
    None stands for "no body"."""
    if value is None:
        return b"", None
    if isinstance(value, str):
        return value.encode("utf-8"), TEXT
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), BINARY
    # allow_nan=False: NaN and Infinity would make invalid JSON, so they fail
    # like any other value that has no JSON form.
    return json.dumps(value, allow_nan=False).encode("utf-8"), JSON


def header_pairs(headers):
    pairs = headers.items() if isinstance(headers, dict) else headers
    return [[str(name), str(value)] for name, value in pairs]


def sedge_answer(value, request):
    """Status, headers and body for a value returned by a `sedge` handler
    (which depend on the value alone, not on the request)."""
    if not isinstance(value, Response):
        body, content_type = body_and_type(value)
        if content_type is None:
            return 204, [], b""
        return 200, [["content-type", content_type]], body
    status = value.status
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"Response status must be a whole number from 100 to 599, not {status!r}")
    headers = header_pairs(value.headers)
    body, content_type = body_and_type(value.body)
    if content_type and not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(["content-type", content_type])
    return status, headers, body


# --- styles -----------------------------------------------------------------
#
# A style lets code written for another platform run unchanged: it calls the
# handler the way that platform's Python runtime calls it and answers the way
# that runtime answers. docs/styles-python.md lists every rule; the comments
# in sedge_styles.py say which runtime a rule comes from.


class Style:
    """How a family of functions expects to be called: `call` runs the
    handler for a Request (its result may be awaitable), `answer` turns what
    it returned into (status, headers, body). `fail`, when given, does the
    same for an exception raised by either, the way the family's own server
    answers one; without it the exception becomes an `error` frame."""

    __slots__ = ("call", "answer", "fail")

    def __init__(self, call, answer, fail=None):
        self.call = call
        self.answer = answer
        self.fail = fail


SEDGE = Style(call=lambda handler, request: handler(request), answer=sedge_answer)


def load_framework_styles():
    """Runs sedge_styles.py in this module's namespace and returns its
    makers by style name."""
    with open(STYLES_FILE, encoding="utf-8") as f:
        code = compile(f.read(), STYLES_FILE, "exec")
    exec(code, globals())
    return globals()["FRAMEWORK_MAKERS"]


def framework_style(name):
    # A worker makes its style once, so the styles are compiled once.
    return lambda handler: load_framework_styles()[name](handler)


# Each style is made for the loaded handler: openfaas looks at its
# parameters, fission imports Flask, kubeless reads the function's limits.
STYLES = {
    "sedge": lambda handler: SEDGE,
    **{name: framework_style(name) for name in ("openfaas", "kubeless", "fission", "funcx")},
}


# --- frames -----------------------------------------------------------------


class Channel:
    """The protocol's socket, which sedge hands over at the descriptor named by
    SEDGE_CHANNEL_FD (3 when unset). It is moved to a descriptor of the
    shim's own, not inherited by child processes, before any user code
    loads, so that nothing the user's code prints, reads or runs can touch
    it; stdout and stderr stay the function's own, for its log."""

    def __init__(self, fd=None):
        if fd is not None:
            # A forked worker's own channel, received from sedge (docs/scaling.md).
            self._open(fd)
            return
        text = os.environ.get("SEDGE_CHANNEL_FD", "3") or "3"
        if not (text.isascii() and text.isdigit()):
            die(f"SEDGE_CHANNEL_FD must be a descriptor number, not {text!r}", 2)
        given = int(text)
        try:
            # os.dup makes a descriptor that exec does not pass on.
            fd = os.dup(given)
        except OSError as e:
            die(f"no channel from sedge at descriptor {given} (SEDGE_CHANNEL_FD): {e}", 2)
        os.close(given)
        self._open(fd)

    def _open(self, fd):
        self.fd = fd
        # Plain file objects over the socket: reads and writes are all it
        # needs, and the socket module would cost every cold start its import.
        self._in = os.fdopen(fd, "rb")
        self._out = os.fdopen(fd, "wb", closefd=False)
        # Frames from several handler threads must not interleave.
        self._lock = threading.Lock()
        sys.stdout.reconfigure(line_buffering=True)

    def read(self):
        """The next (header, body), or None when sedge ended the channel
        between frames."""
        prefix = self._in.read(PREFIX.size)
        if not prefix:
            return None
        if len(prefix) < PREFIX.size:
            raise ProtocolError("stream ended inside a frame prefix")
        header_len, body_len = PREFIX.unpack(prefix)
        if header_len > MAX_HEADER:
            raise ProtocolError(f"frame header of {header_len} bytes is over the limit of {MAX_HEADER}")
        if body_len > MAX_BODY:
            raise ProtocolError(f"frame body of {body_len} bytes is over the limit of {MAX_BODY}")
        raw = self._in.read(header_len)
        body = self._in.read(body_len)
        if len(raw) < header_len or len(body) < body_len:
            raise ProtocolError("stream ended inside a frame")
        try:
            header = _decode_json(raw.decode("utf-8"))
        except ValueError as e:
            raise ProtocolError(f"frame header is not valid JSON: {e}") from None
        if not isinstance(header, dict):
            raise ProtocolError("frame header is not a JSON object")
        return header, body

    def send(self, header, body=b""):
        """Writes one frame; raises ValueError, before writing anything, when
        it would be over the protocol's limits."""
        raw = _encode_json(header).encode("utf-8")
        if len(raw) > MAX_HEADER or len(body) > MAX_BODY:
            raise ValueError(
                f"answer too large for a frame ({len(raw)} header bytes, {len(body)} body bytes; "
                f"limits {MAX_HEADER} and {MAX_BODY})"
            )
        head = PREFIX.pack(len(raw), len(body)) + raw
        with self._lock:
            try:
                # One write for the usual small answer (one wake-up on sedge's
                # side); a large body follows its head rather than being copied.
                if len(body) <= COALESCE:
                    self._out.write(head + body)
                else:
                    self._out.write(head)
                    self._out.write(body)
                self._out.flush()
            except OSError as e:
                # sedge no longer listens: nothing this worker does can be seen.
                die(f"cannot write to sedge: {e}", 1)


def die(message, code):
    sys.stderr.write(f"sedge worker: {message}\n")
    sys.stderr.flush()
    # os._exit, not sys.exit: handler threads must not hold the exit up.
    os._exit(code)


# --- loading ----------------------------------------------------------------


def clipped(text):
    if len(text) <= MAX_ERROR_TEXT:
        return text
    return text[:MAX_ERROR_TEXT] + "\n... (cut)"


def is_plumbing(filename):
    return filename in PLUMBING_FILES or filename.startswith(("<frozen importlib", ASYNCIO_DIR))


def user_traceback(exc):
    """The traceback of `exc` without the shim's and the import system's
    frames on top."""
    tb = exc.__traceback__
    while tb is not None and is_plumbing(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def summary(exc):
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def pick_style():
    name = os.environ.get("SEDGE_STYLE", "sedge") or "sedge"
    if name not in STYLES:
        raise LoadError(f"unknown SEDGE_STYLE {name!r}; this runtime knows {', '.join(sorted(STYLES))}")
    return STYLES[name]


def read_concurrency():
    text = os.environ.get("SEDGE_CONCURRENCY", "1") or "1"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise LoadError(f"SEDGE_CONCURRENCY must be a whole number of at least 1, not {text!r}")
    return n


def read_max_answer():
    """The largest answer body the function may give, in bytes
    (SEDGE_MAX_ANSWER; the protocol's own limit when unset)."""
    text = os.environ.get("SEDGE_MAX_ANSWER", "")
    if not text:
        return MAX_BODY
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise LoadError(f"SEDGE_MAX_ANSWER must be a whole number of bytes, at least 1, not {text!r}")
    return min(int(text), MAX_BODY)


def add_function_packages():
    """Puts the packages sedge installed from the function's requirements.txt
    ahead of the node's own, so a pinned version wins over the one the
    node's interpreter happens to have; their .pth files are honoured."""
    folder = os.environ.get("SEDGE_MODULES_DIR", "")
    if not folder:
        return
    import site

    before = list(sys.path)
    site.addsitedir(folder)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before


class ModelLoads:
    """Time spent building onnxruntime sessions while the function's module
    loads, so the ready frame can tell model loading from other imports.
    onnxruntime is wrapped when it is imported (or now, if a spare already
    imported it); nothing else about it changes."""

    spent = 0.0
    # In a zygote, sessions built without a thread count get one thread:
    # a pool of threads does not survive a fork (docs/scaling.md).
    one_thread = False
    # Threads onnxruntime's own import started.
    import_threads = set()
    # Sessions a zygote's module built, run once before the first fork.
    sessions = []

    # The same, once rehearsed: a worker forked ahead of demand runs them
    # again on its own pages (`warm_up`).
    rehearsed = []

    @classmethod
    def rehearse(cls):
        """Runs each session once on zeros, so its first run's allocations
        and set-up happen in the zygote, shared, rather than in every
        forked worker's first call. A session that refuses is left be."""
        if not cls.sessions:
            return  # and numpy is not imported into a zygote that never needed it
        cls.rehearsed = [s for s in cls.sessions if cls.run_on_zeros(s)]
        cls.sessions = []

    @classmethod
    def warm_up(cls):
        """In a forked worker made ahead of demand: runs the rehearsed
        sessions once more, so the pages their runs write (arenas, buffers,
        shared with the zygote until written) are copied now rather than
        during the worker's first call. It is work done ahead, so it runs
        on a thread of its own at nice 19: a worker that is serving keeps
        its core (SCHED_IDLE was tried: on a node busy with other work the
        warm-up then waited seconds)."""

        def run():
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            except (AttributeError, OSError):
                pass
            for session in cls.rehearsed:
                cls.run_on_zeros(session)

        if cls.rehearsed:
            thread = threading.Thread(target=run, name="sedge-warm-up")
            thread.start()
            thread.join()

    @staticmethod
    def run_on_zeros(session):
        try:
            import numpy as np
        except ImportError:
            return False
        kinds = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
                 "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
                 "tensor(bool)": np.bool_, "tensor(float16)": np.float16}
        try:
            feed = {}
            for i in session.get_inputs():
                shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
                feed[i.name] = np.zeros(shape, kinds[i.type])
            session.run(None, feed)
            return True
        except Exception:  # a model that needs real inputs: its first call pays
            return False

    @classmethod
    def wrap(cls, module):
        session = getattr(module, "InferenceSession", None)
        init = getattr(session, "__init__", None)
        if session is None or init is None or getattr(init, "_sedge_timed", False):
            return

        def timed_init(self, *args, **kwargs):
            if cls.one_thread:
                args, kwargs = one_thread_options(module, args, kwargs)
            began = time.perf_counter()
            try:
                init(self, *args, **kwargs)
            finally:
                cls.spent += time.perf_counter() - began
            if cls.one_thread:
                cls.sessions.append(self)

        timed_init._sedge_timed = True
        session.__init__ = timed_init

    @classmethod
    def watch(cls):
        if "onnxruntime" in sys.modules:
            cls.wrap(sys.modules["onnxruntime"])
            return
        import importlib.abc
        import importlib.util

        class Finder(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name != "onnxruntime":
                    return None
                sys.meta_path.remove(self)
                spec = importlib.util.find_spec(name)
                loader = getattr(spec, "loader", None)
                if loader is None or not hasattr(loader, "exec_module"):
                    return spec
                run = loader.exec_module

                def exec_module(module):
                    before = thread_ids()
                    run(module)
                    # onnxruntime starts a housekeeping thread of its own on
                    # import, idle in timed waits; sessions with one thread
                    # run on the caller's, which a fork keeps (docs/scaling.md).
                    cls.import_threads |= thread_ids() - before
                    cls.wrap(module)

                loader.exec_module = exec_module
                return spec

        sys.meta_path.insert(0, Finder())


def one_thread_options(ort, args, kwargs):
    """The session's arguments with its options asking for one intra-op and
    one inter-op thread, unless they already name a count."""
    args = list(args)
    options = kwargs.get("sess_options", args[1] if len(args) > 1 else None)
    if options is None:
        options = ort.SessionOptions()
    if not options.intra_op_num_threads:
        options.intra_op_num_threads = 1
    if not options.inter_op_num_threads:
        options.inter_op_num_threads = 1
    if "sess_options" in kwargs or len(args) <= 1:
        kwargs["sess_options"] = options
    else:
        args[1] = options
    return tuple(args), kwargs


# --- zygote ---------------------------------------------------------------------
#
# With SEDGE_ZYGOTE=1 the shim loads the function's module, then forks a
# worker for every `fork` frame instead of serving: the workers share its
# loaded pages copy-on-write and skip the imports (docs/scaling.md).

FORK_THREADS_HINT = (
    "set onnxruntime's intra_op_num_threads / inter_op_num_threads to 1, or "
    "OMP_NUM_THREADS / OPENBLAS_NUM_THREADS to 1, or start threads on the first call"
)


def thread_ids():
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return set()


def fork_hazards(channel_fd):
    """What the loaded module left that a fork would break, or None."""
    python_threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if python_threads:
        return f"the module started Python threads ({', '.join(python_threads[:5])}), which a fork does not copy"
    try:
        tasks = set(os.listdir("/proc/self/task"))
    except OSError:
        return "/proc is not readable, so native threads cannot be ruled out"
    others = tasks - {str(os.getpid())} - ModelLoads.import_threads
    if others:
        return f"native libraries started {len(others)} thread(s) at import, which a fork does not copy; {FORK_THREADS_HINT}"
    for name in os.listdir("/proc/self/fd"):
        if not name.isdigit() or int(name) in (0, 1, 2, channel_fd):
            continue
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:"):
            return "the module opened a socket at import (a connection its forked workers would share); open it on the first call instead"
    return None


def zygote(channel, loaded, imports_us, model_us):
    import signal
    import socket

    ModelLoads.rehearse()
    hazard = fork_hazards(channel.fd)
    if hazard is not None:
        channel.send({"type": "unforkable", "reason": hazard})
        return 0
    # Its workers are reaped by the kernel as they end; each gets the
    # default back.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    channel.send({"type": "zygote", "imports_us": imports_us, "model_us": model_us})
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(channel.fd))
    fds_space = socket.CMSG_SPACE(3 * 4)
    while True:
        data, ancillary, _, _ = sock.recvmsg(PREFIX.size + MAX_FORK_HEADER, fds_space, socket.MSG_CMSG_CLOEXEC)
        if not data:
            return 0
        fds = []
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) // 4 * 4]))
        while len(data) < PREFIX.size:
            more = sock.recv(PREFIX.size - len(data))
            if not more:
                return 0
            data += more
        header_len, _ = PREFIX.unpack(data[: PREFIX.size])
        while len(data) < PREFIX.size + header_len:
            more = sock.recv(PREFIX.size + header_len - len(data))
            if not more:
                return 0
            data += more
        header = _decode_json(data[PREFIX.size : PREFIX.size + header_len].decode("utf-8"))
        if not isinstance(header, dict) or header.get("type") != "fork" or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            die("bad frame from sedge: a zygote expects fork frames with three descriptors", 2)
        pid = os.fork()
        if pid == 0:
            os._exit(forked_worker(channel, sock, fds, loaded, header.get("warm") is True))
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass  # the child did it first, or is already gone
        for fd in fds:
            os.close(fd)
        channel.send({"type": "forked", "pid": pid})


def forked_worker(zygote_channel, zygote_sock, fds, loaded, warm):
    """The forked child: takes its own channel and output (and, made ahead
    of demand, warms its models up), then serves."""
    import signal

    try:
        os.setpgid(0, 0)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        zygote_sock.close()
        os.close(zygote_channel.fd)
        channel_fd, out_fd, err_fd = fds
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.close(out_fd)
        os.close(err_fd)
        # `random` reseeds itself in a forked child; numpy's global one does not.
        np_random = sys.modules.get("numpy.random")
        if np_random is not None and hasattr(np_random, "seed"):
            np_random.seed()
        if warm:
            ModelLoads.warm_up()
        channel = Channel(channel_fd)
        channel.send({"type": "ready", "imports_us": 0, "model_us": 0})
        serve(channel, loaded)
        return 0
    except BaseException:  # never back into the zygote's loop
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


MAX_FORK_HEADER = 4096


def load_handler(function_dir, handler_name):
    module_name, _, func_name = handler_name.rpartition(".")
    if not module_name or not func_name:
        raise LoadError(f"handler {handler_name!r} is not of the form module.function")
    sys.path.insert(0, function_dir)
    try:
        module = importlib.import_module(module_name)
    except BaseException as e:  # a module may even call sys.exit()
        detail = user_traceback(e)
        # A traceback with no frames (a missing module) only repeats the summary.
        text = summary(e) if detail.strip() == summary(e) else f"{summary(e)}\n\n{detail}"
        raise LoadError(text) from None
    func = getattr(module, func_name, None)
    if func is None:
        raise LoadError(f"module {module_name!r} ({module.__file__}) has no attribute {func_name!r}")
    if not callable(func):
        raise LoadError(f"{handler_name} is a {type(func).__name__}, not a function")
    return func


# --- models -------------------------------------------------------------------
#
# sedge.infer sends an `infer` frame on behalf of the invocation running in
# the calling thread and waits for its answer, which the serving loop reads
# off the channel (docs/protocol.md, "Models called from functions").


class InferError(Exception):
    """A model call that did not happen: undeclared or missing model, bad
    inputs, the model's queue full, the invocation's deadline passed."""


# Element types by the protocol's names: numpy's little-endian dtype and the
# array module's code, for functions without numpy.
DTYPES = {
    "FP32": ("<f4", "f"),
    "FP64": ("<f8", "d"),
    "INT64": ("<i8", "q"),
    "INT32": ("<i4", "i"),
    "UINT8": ("u1", "B"),
    "INT8": ("i1", "b"),
    "BOOL": ("?", "B"),
}
NUMPY_NAMES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32",
               "uint8": "UINT8", "int8": "INT8", "bool": "BOOL"}


class Models:
    """The models this function may call (SEDGE_MODELS) and its calls in
    flight, whose answers come in through the worker's `Frames`."""

    def __init__(self, declared):
        self.declared = declared
        self.channel = None
        self.frames = None
        # Invocations running now, for a call made from a thread the
        # handler started itself.
        self.in_flight = set()

    def call_id(self):
        call = getattr(_thread_state, "call", None)
        if call is not None:
            return call
        running = list(self.in_flight)
        if len(running) == 1:
            return running[0]
        if not running:
            raise InferError("sedge.infer is for use while an invocation runs")
        raise InferError("sedge.infer from a thread of the handler's own needs one invocation at a time; "
                         "call it from the handler's thread")

    def infer(self, model, inputs):
        if not isinstance(model, str):
            raise TypeError(f"sedge.infer: the model is a function name, not {type(model).__name__}")
        if model not in self.declared:
            names = ", ".join(_encode_json(n) for n in self.declared)
            raise InferError(f"{model} is not in this function's models = [{names}]")
        header, body = infer_request(inputs)
        call = self.call_id()
        frames = self.frames
        event = thread_event()
        infer_id, slot = frames.expect(event)
        header.update({"type": "infer", "id": infer_id, "call": call, "model": model})
        try:
            self.channel.send(header, body)
            frames.wait(slot.answered, event)
        finally:
            frames.forget(infer_id)
        answer, answer_body = slot.header, slot.body
        if answer is None:
            raise InferError(f"sedge ended the channel before {model} answered")
        if answer.get("type") == "infer_error":
            raise InferError(str(answer.get("error")))
        if answer.get("json"):
            return _decode_json(answer_body.decode("utf-8"))
        return infer_outputs(answer.get("outputs"), answer_body)


class Answer:
    """Where the answer to one inference lands."""

    __slots__ = ("event", "header", "body", "frames")

    def __init__(self, event, frames):
        self.event = event
        self.header = None
        self.body = None
        self.frames = frames

    def answered(self):
        # The channel's end is an answer too: none other can come after it.
        return self.header is not None or self.frames.ended


def thread_event():
    """This thread's own Event, made once: a thread waits for one thing at a time."""
    event = getattr(_thread_state, "event", None)
    if event is None:
        event = _thread_state.event = threading.Event()
    return event


class Frames:
    """The frames sedge sends a worker that calls models, read by whichever
    thread waits for one: the serving loop between invocations, and
    sedge.infer while it waits for its answer. With one invocation at a
    time the handler then reads its own answer on its own thread, with no
    hand-off to another. Invocations read meanwhile wait in `invocations`
    for the serving loop, in the order they came.

    One thread reads at a time (`_reading`); the others sleep on their
    Events and are woken when what they wait for has come, or when the
    reader stops reading, so that one of them reads on."""

    def __init__(self, channel):
        self.channel = channel
        self.invocations = []
        self.ended = False
        self.serving_event = None
        # With several invocations at a time the serving loop reads every
        # frame and the handler threads only wait: letting a waiting thread
        # read too was measured to cost more, as the answers then still
        # cross threads and the threads wake more often (docs/models.md).
        self.only_serving_reads = False
        self._reading = threading.Lock()
        self._lock = threading.Lock()
        self._next_id = 0
        self._answers = {}
        self._sleepers = set()

    def expect(self, event):
        """A new inference's id and the Answer its frame will fill."""
        slot = Answer(event, self)
        with self._lock:
            self._next_id += 1
            infer_id = self._next_id
            self._answers[infer_id] = slot
        return infer_id, slot

    def forget(self, infer_id):
        with self._lock:
            self._answers.pop(infer_id, None)

    def has_work(self):
        return bool(self.invocations) or self.ended

    def wait(self, ready, event):
        """Returns once ready() is true, reading frames on this thread
        whenever no other thread does."""
        while True:
            # Cleared before ready() is checked: a wake-up after the check
            # finds the event set, so none is lost.
            event.clear()
            if ready():
                return
            if self.only_serving_reads and event is not self.serving_event:
                event.wait()
                continue
            if self._reading.acquire(blocking=False):
                try:
                    self._read_until(ready)
                finally:
                    self._reading.release()
                    self._wake_sleepers()
                return
            with self._lock:
                self._sleepers.add(event)
            try:
                # Rechecked once registered: a reader that stopped before
                # this thread became a sleeper woke no one, and this thread
                # reads on itself.
                if not ready() and self._reading.locked():
                    event.wait()
            finally:
                with self._lock:
                    self._sleepers.discard(event)

    def _read_until(self, ready):
        read, take = self.channel.read, self._take
        while not ready():
            try:
                frame = read()
            except ProtocolError as e:
                die(f"bad frame from sedge: {e}", 2)
            except OSError as e:
                die(f"cannot read from sedge: {e}", 1)
            take(frame)

    def _take(self, frame):
        """Puts one frame read where it belongs; any frame that the serving
        loop would refuse ends the worker just as it would."""
        try:
            if frame is None:
                self.ended = True
                self._wake_all()
                return
            header, body = frame
            kind = header.get("type")
            if kind == "infer_result" or kind == "infer_error":
                with self._lock:
                    slot = self._answers.get(header.get("id"))
                if slot is None:
                    raise ProtocolError(f"an answer to inference {header.get('id')!r}, which is not waiting")
                slot.body = body
                slot.header = header
                slot.event.set()
                return
            self.invocations.append(parse_invoke(header, body))
            if self.serving_event is not None:
                self.serving_event.set()
        except ProtocolError as e:
            die(f"bad frame from sedge: {e}", 2)

    def _wake_sleepers(self):
        with self._lock:
            sleepers = list(self._sleepers)
        for event in sleepers:
            event.set()

    def _wake_all(self):
        self._wake_sleepers()
        with self._lock:
            slots = list(self._answers.values())
        for slot in slots:
            slot.event.set()
        if self.serving_event is not None:
            self.serving_event.set()


_models = Models(())


def infer(model, inputs):
    """Runs a model that the node serves and returns its outputs.

    inputs: a numpy array (the model's only input), a dict of input name to
    array, nested lists of numbers in place of arrays, or bytes (a picture,
    for an image model, whose answer is its JSON: the best classes).
    Returns the output array, or a dict of output name to array when the
    model has several outputs (nested lists when numpy is not installed).
    """
    return _models.infer(model, inputs)


def numpy_or_none():
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def infer_request(inputs):
    """The `inputs` part of an infer header and the frame's body."""
    if isinstance(inputs, (bytes, bytearray, memoryview)):
        return {"image": True}, bytes(inputs)
    named = inputs.items() if isinstance(inputs, dict) else [("", inputs)]
    heads, parts = [], []
    for name, value in named:
        if not isinstance(name, str):
            raise TypeError(f"sedge.infer: input names are strings, not {type(name).__name__}")
        datatype, shape, data = tensor_bytes(name, value)
        heads.append({"name": name, "datatype": datatype, "shape": shape, "size": len(data)})
        parts.append(data)
    body = parts[0] if len(parts) == 1 else b"".join(parts)
    return {"inputs": heads}, body


def tensor_bytes(name, value):
    """The type, shape and raw little-endian bytes of one input."""
    label = f"input {name!r}" if name else "the input"
    if isinstance(value, (list, tuple)):
        return list_bytes(label, value)
    numpy = numpy_or_none()
    if numpy is None or not isinstance(value, numpy.ndarray):
        raise TypeError(f"sedge.infer: {label} must be a numpy array or nested lists of numbers, "
                        f"not {type(value).__name__}")
    datatype = NUMPY_NAMES.get(value.dtype.name)
    if datatype is None:
        raise TypeError(f"sedge.infer: {label} has dtype {value.dtype.name}; models here take "
                        f"{', '.join(NUMPY_NAMES)}")
    array = numpy.ascontiguousarray(value, dtype=numpy.dtype(DTYPES[datatype][0]))
    return datatype, list(array.shape), memoryview(array).cast("B")


def list_bytes(label, value):
    """Nested lists as a tensor: FP32 when any value is a float, else INT64
    (BOOL when all are booleans)."""
    from array import array

    shape, flat = [], value
    while isinstance(flat, (list, tuple)):
        shape.append(len(flat))
        flat = flat[0] if flat else None
    values = []

    def walk(v, depth):
        if depth == len(shape):
            if isinstance(v, (list, tuple)) or not isinstance(v, (int, float)):
                raise TypeError(f"sedge.infer: {label} is not nested lists of numbers of one shape")
            values.append(v)
            return
        if not isinstance(v, (list, tuple)) or len(v) != shape[depth]:
            raise TypeError(f"sedge.infer: {label} is not nested lists of one shape {shape}")
        for item in v:
            walk(item, depth + 1)

    walk(value, 0)
    if values and all(isinstance(v, bool) for v in values):
        datatype = "BOOL"
    elif any(isinstance(v, float) for v in values):
        datatype = "FP32"
    else:
        datatype = "INT64"
    data = array(DTYPES[datatype][1], values)
    if sys.byteorder == "big":
        data.byteswap()
    return datatype, shape, data.tobytes()


def infer_outputs(heads, body):
    """The outputs of an infer_result frame: one array, or a dict by name."""
    if not isinstance(heads, list):
        raise ProtocolError("an infer_result frame without outputs")
    numpy = numpy_or_none()
    # One copy, so that the arrays are writable like any others.
    data = bytearray(body) if numpy is not None else body
    outputs, at = {}, 0
    for head in heads:
        datatype, shape, size = head.get("datatype"), head.get("shape"), head.get("size")
        if datatype not in DTYPES or not isinstance(shape, list) or not isinstance(size, int):
            raise InferError(f"the model answered an output sedge.infer cannot read: {head!r}")
        if numpy is not None:
            dtype = numpy.dtype(DTYPES[datatype][0])
            value = numpy.frombuffer(data, dtype=dtype, count=size // dtype.itemsize, offset=at).reshape(shape)
        else:
            value = nested(list_of(datatype, body[at:at + size]), shape)
        outputs[head.get("name", "")] = value
        at += size
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    return outputs


def list_of(datatype, raw):
    from array import array

    values = array(DTYPES[datatype][1])
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    if datatype == "BOOL":
        return [bool(v) for v in values]
    return values.tolist()


def nested(flat, shape):
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [nested(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def read_models():
    text = os.environ.get("SEDGE_MODELS", "")
    return tuple(name for name in text.split(",") if name)


# --- serving ----------------------------------------------------------------

_thread_state = threading.local()


def settle(value):
    """Runs an awaitable to its end on this thread's own event loop, which
    lives as long as the thread so loop-bound resources (clients, pools)
    that a handler caches stay usable across calls."""
    if not hasattr(value, "__await__") and not isinstance(value, types.GeneratorType):
        return value
    import inspect

    if not inspect.isawaitable(value):
        return value
    import asyncio

    loop = getattr(_thread_state, "loop", None)
    if loop is None:
        loop = _thread_state.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
    return loop.run_until_complete(value)


_INVOKE_FIELDS = (("id", int), ("method", str), ("path", str), ("query", str), ("headers", list))


def parse_invoke(header, body):
    """The id and Request of an `invoke` frame; ProtocolError when malformed.

    This runs for every request, so the common, valid frame is checked with a
    few exact type tests and the field-by-field diagnosis runs only when they
    fail."""
    if header.get("type") != "invoke":
        raise ProtocolError(f"expected an invoke frame, got type {header.get('type')!r}")
    get = header.get
    invocation_id, method, path, query, headers = get("id"), get("method"), get("path"), get("query"), get("headers")
    if not (
        type(invocation_id) is int
        and type(method) is str
        and type(path) is str
        and type(query) is str
        and type(headers) is list
    ):
        for name, kind in _INVOKE_FIELDS:
            value = get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ProtocolError(f"invoke frame field {name!r} is missing or not a {kind.__name__}")
    for pair in headers:
        if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str or type(pair[1]) is not str:
            raise ProtocolError("invoke frame field 'headers' is not a list of [name, value] strings")
    return invocation_id, Request(method, path, query, headers, body)


def run_invocation(channel, loaded, invocation_id, request):
    style, handler = loaded.style, loaded.handler
    try:
        try:
            status, headers, body = style.answer(settle(style.call(handler, request)), request)
        except Exception as e:
            if style.fail is None:
                raise
            status, headers, body = style.fail(e, request)
        if len(body) > loaded.max_answer:
            # Not sent: sedge would only skip it. answer_size tells sedge why.
            message = f"answer of {len(body)} bytes is over the function's max_answer of {loaded.max_answer} bytes"
            channel.send(
                {"type": "error", "id": invocation_id, "error": message, "trace": message, "answer_size": len(body)}
            )
            return
        channel.send({"type": "response", "id": invocation_id, "status": status, "headers": headers}, body)
    except BaseException as e:  # whatever the handler does, sedge gets an answer
        trace = user_traceback(e)
        sys.stderr.write(trace)
        sys.stderr.flush()
        channel.send({"type": "error", "id": invocation_id, "error": clipped(summary(e)), "trace": clipped(trace)})


def run_calling_models(channel, loaded, invocation_id, request):
    """An invocation whose code may call models: sedge.infer finds it by
    its thread."""
    _thread_state.call = invocation_id
    _models.in_flight.add(invocation_id)
    try:
        run_invocation(channel, loaded, invocation_id, request)
    finally:
        _models.in_flight.discard(invocation_id)
        _thread_state.call = None


class Loaded:
    """A worker's loaded function and the limits it is served with."""

    __slots__ = ("style", "handler", "concurrency", "max_answer")

    def __init__(self, style, handler, concurrency, max_answer):
        self.style = style
        self.handler = handler
        self.concurrency = concurrency
        self.max_answer = max_answer


def serve(channel, loaded):
    if _models.declared:
        serve_calling_models(channel, loaded)
        return
    pool = None
    if loaded.concurrency > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(loaded.concurrency, thread_name_prefix="sedge-handler")
    while True:
        try:
            frame = channel.read()
            if frame is None:
                break
            invocation_id, request = parse_invoke(*frame)
        except ProtocolError as e:
            die(f"bad frame from sedge: {e}", 2)
        if pool is None:
            run_invocation(channel, loaded, invocation_id, request)
        else:
            pool.submit(run_invocation, channel, loaded, invocation_id, request)
    if pool is not None:
        # Invocations already received still get their answers.
        pool.shutdown(wait=True)


def serve_calling_models(channel, loaded):
    """The serving loop of a function that declares models. With one
    invocation at a time its handler runs on this thread, and sedge.infer
    reads the answers it waits for itself; with more, they run on a pool
    and this thread reads every frame."""
    frames = _models.frames = Frames(channel)
    _models.channel = channel
    event = frames.serving_event = thread_event()
    frames.only_serving_reads = loaded.concurrency > 1
    pool = None
    if loaded.concurrency > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(loaded.concurrency, thread_name_prefix="sedge-handler")
    invocations = frames.invocations
    while True:
        frames.wait(frames.has_work, event)
        if not invocations:
            break  # the channel ended, and every invocation it brought has run
        invocation_id, request = invocations.pop(0)
        if pool is None:
            run_calling_models(channel, loaded, invocation_id, request)
        else:
            pool.submit(run_calling_models, channel, loaded, invocation_id, request)
    if pool is not None:
        # Invocations already received still get their answers.
        pool.shutdown(wait=True)


# --- process title ------------------------------------------------------------

# The kernel keeps a process's short name (comm: what `ps -o comm`, top and
# pgrep show) in 16 bytes, its terminating zero included.
COMM_BYTES = 15


def title_setter():
    """setproctitle's function when that package is importable (it rewrites
    the command line `ps` shows, which the standard library cannot), else
    None. A spare imports it before its function is known, so that the cold
    start does not pay for the import."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        return None
    return setproctitle


def set_title(name, setter):
    """Names the worker after its function: every spare starts as
    `sedge_worker.py --spare`, and a page of those in `ps` says nothing
    about which process serves what. The command line becomes `sedge-fn
    NAME` where setproctitle is installed; the short name is always set."""
    if setter is not None:
        try:
            setter(f"sedge-fn {name}")
        except Exception:  # a title is never worth failing a load for
            pass
    try:
        with open("/proc/self/comm", "wb") as comm:
            comm.write(name.encode("utf-8", "replace")[:COMM_BYTES])
    except OSError:
        # Not Linux, or /proc not mounted in this sandbox: the title stays.
        pass


def preload():
    """A spare started for one function (SEDGE_PRELOAD, sandboxed nodes)
    imports the heavy modules its requirements name ahead, from the
    function's own packages first, so its start pays only the rest. A
    module that does not import is left to the function's own import,
    which reports it."""
    names = [n for n in os.environ.pop("SEDGE_PRELOAD", "").split(",") if n]
    if not names:
        return
    add_function_packages()
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            pass


def await_assignment(channel):
    """A spare worker is started before any function needs it, so that the
    interpreter's and the shim's start-up are paid before a request waits.
    The `load` frame then says which function it becomes: the environment
    and working directory that a worker started for that function would
    have had, and the folder and handler to load."""
    preload()
    channel.send({"type": "spare"})
    frame = channel.read()
    if frame is None:
        sys.exit(0)
    header, _ = frame
    env = header.get("env")
    if (
        header.get("type") != "load"
        or not isinstance(header.get("dir"), str)
        or not isinstance(header.get("handler"), str)
        or not isinstance(env, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        raise ProtocolError("a spare worker expects a load frame with dir, handler and env")
    os.environ.update(env)
    os.chdir(header["dir"])
    sys.argv[1:] = [header["dir"], header["handler"]]
    return header["dir"], header["handler"]


def main(argv):
    spare = argv[1:] == ["--spare"]
    if len(argv) != 3 and not spare:
        sys.stderr.write("usage: sedge_worker.py FUNCTION_DIR HANDLER | --spare\n")
        return 2
    channel = Channel()
    install_sedge_module()
    setter = title_setter()
    if spare:
        try:
            function_dir, handler_name = await_assignment(channel)
        except ProtocolError as e:
            die(f"bad frame from sedge: {e}", 2)
    else:
        function_dir, handler_name = argv[1], argv[2]
    set_title(os.environ.get("SEDGE_FUNCTION") or os.path.basename(os.path.abspath(function_dir)), setter)
    # Before the style: fission's needs Flask, which may be the function's own.
    add_function_packages()
    try:
        make_style = pick_style()
        concurrency = read_concurrency()
        max_answer = read_max_answer()
        _models.declared = read_models()
        as_zygote = os.environ.pop("SEDGE_ZYGOTE", "") == "1"
        ModelLoads.one_thread = as_zygote
        ModelLoads.watch()
        began = time.perf_counter()
        handler = load_handler(function_dir, handler_name)
        took = time.perf_counter() - began
        loaded = Loaded(make_style(handler), handler, concurrency, max_answer)
    except LoadError as e:
        channel.send({"type": "load_error", "error": clipped(str(e))})
        return 1
    model = min(ModelLoads.spent, took)
    imports_us, model_us = int((took - model) * 1e6), int(model * 1e6)
    if as_zygote:
        return zygote(channel, loaded, imports_us, model_us)
    channel.send({"type": "ready", "imports_us": imports_us, "model_us": model_us})
    serve(channel, loaded)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
