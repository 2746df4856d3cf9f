# kiln's Python function shim: the workload of a python runtime VM. It listens on the VM's
# network, loads one function's code when kilnd says so (POST /load), then serves invocations
# (POST /invoke) with print()/stdout/stderr captured per invocation. Standard library only.
import asyncio
import base64
import importlib.util
import inspect
import io
import json
import os
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("KILN_SHIM_PORT", "7070"))
# Written by kilnd through the (authenticated) guest agent, new for every instance including
# restored clones; every request must carry it, so no other VM or host user can load code or
# read events here. Read per request: a clone gets its key after it resumed.
KEY_FILE = os.environ.get("KILN_SHIM_KEY_FILE", "/run/kiln/shim.key")


def _authorized(headers):
    import hmac
    try:
        with open(KEY_FILE, "rb") as f:
            want = f.read().strip()
    except OSError:
        return False
    given = (headers.get("x-kiln-shim-key") or "").encode()
    return len(want) > 0 and hmac.compare_digest(given, want)
CODE_ROOT = os.environ.get("KILN_CODE_ROOT", "/tmp/kiln-fn")
MAX_BODY = 96 * 1024 * 1024
MAX_LOG = 256 * 1024

_local = threading.local()
_loaded = None  # dict(version, name, fn, nargs)


class _Capture(io.TextIOBase):
    """sys.stdout/sys.stderr: text written on an invocation's thread is that invocation's."""

    def __init__(self, real):
        self._real = real

    def writable(self):
        return True

    def write(self, s):
        inv = getattr(_local, "inv", None)
        if inv is None:
            return self._real.write(s)
        room = MAX_LOG - inv["bytes"]
        if room <= 0:
            inv["truncated"] = True
            return len(s)
        piece = s[:room]
        if len(piece) < len(s):
            inv["truncated"] = True
        inv["bytes"] += len(piece)
        inv["logs"].append(piece)
        return len(s)

    def flush(self):
        if getattr(_local, "inv", None) is None:
            self._real.flush()


sys.stdout = _Capture(sys.__stdout__)
sys.stderr = _Capture(sys.__stderr__)


class LoadError(Exception):
    def __init__(self, type_, message, stack=None):
        super().__init__(message)
        self.info = {"type": type_, "message": message, "stack": stack}


def error_of(e):
    return {
        "type": type(e).__name__,
        "message": str(e),
        "stack": "".join(traceback.format_exception(type(e), e, e.__traceback__)),
    }


def write_files(root, files):
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root, exist_ok=True)
    real_root = os.path.realpath(root)
    for f in files:
        target = os.path.realpath(os.path.join(root, f["path"]))
        if not target.startswith(real_root + os.sep):
            raise LoadError("InvalidCode", "file path escapes the code directory: %s" % f["path"])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if f.get("symlink"):
            os.symlink(f["symlink"], target)
            continue
        with open(target, "wb") as out:
            out.write(base64.b64decode(f["data"]))
        os.chmod(target, f.get("mode") or 0o644)


def split_handler(handler):
    # "main.handler" -> module main, function handler; a bare name is a function of main.py.
    if "." not in handler:
        return "main", handler
    mod, _, name = handler.rpartition(".")
    return mod, name


def load(req):
    global _loaded
    if _loaded is not None:
        raise LoadError("AlreadyLoaded", "this instance already runs version %s" % _loaded["version"])
    root = os.path.join(CODE_ROOT, "v%d" % int(req["version"]))
    write_files(root, req["files"])
    for k, v in (req.get("env") or {}).items():
        os.environ[k] = str(v)
    os.chdir(root)
    sys.path.insert(0, root)
    modname, name = split_handler(req["handler"])
    rel = modname.replace(".", os.sep)
    path = os.path.join(root, rel + ".py")
    if not os.path.isfile(path):
        pkg = os.path.join(root, rel, "__init__.py")
        if not os.path.isfile(pkg):
            raise LoadError("HandlerNotFound", "no module %r (looked for %s.py) in the function's code" % (modname, rel))
        path = pkg
    with open(path, "rb") as fh:
        source = fh.read()
    try:
        # Parse first: a syntax error is reported as such, with nothing of the code run.
        code = compile(source, os.path.relpath(path, root), "exec")
    except SyntaxError as e:
        raise LoadError("SyntaxError", "%s (%s, line %s)" % (e.msg, e.filename, e.lineno), "".join(traceback.format_exception_only(type(e), e)))
    spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        exec(code, module.__dict__)
    except Exception as e:
        raise LoadError("InitError", "%s: %s" % (type(e).__name__, e), error_of(e)["stack"])
    fn = getattr(module, name, None)
    if not callable(fn):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise LoadError("HandlerNotFound", "handler %r is not a function in %s (functions: %s)" % (name, os.path.relpath(path, root), ", ".join(names) or "none"))
    try:
        params = [p for p in inspect.signature(fn).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        varargs = any(p.kind == p.VAR_POSITIONAL for p in inspect.signature(fn).parameters.values())
        nargs = 2 if varargs or len(params) >= 2 else len(params)
    except (TypeError, ValueError):
        nargs = 2
    _loaded = {"version": req["version"], "name": req.get("function") or name, "fn": fn, "nargs": nargs}


class Context:
    def __init__(self, req):
        self.function_name = _loaded["name"]
        self.function_version = str(_loaded["version"])
        self.invocation_id = req.get("id")
        self.deadline_ms = req.get("deadline_ms")

    def get_remaining_time_in_millis(self):
        return max(0, int(self.deadline_ms - time.time() * 1000)) if self.deadline_ms else None


def invoke(req):
    inv = {"logs": [], "bytes": 0, "truncated": False}
    _local.inv = inv
    started = time.perf_counter()
    try:
        fn, nargs = _loaded["fn"], _loaded["nargs"]
        args = (req.get("event"), Context(req))[:nargs]
        value = fn(*args)
        if inspect.isawaitable(value):
            value = asyncio.run(_await(value))
        try:
            result = json.dumps(value)
        except (TypeError, ValueError) as e:
            raise TypeError("the handler returned a value with no JSON form: %s" % e)
        out = '{"ok":true,"result":%s' % result
    except MemoryError as e:
        out = '{"ok":false,"error":%s' % json.dumps({"type": "MemoryError", "message": str(e) or "out of memory", "stack": None})
    except BaseException as e:
        out = '{"ok":false,"error":%s' % json.dumps(error_of(e))
    finally:
        _local.inv = None
    guest_ms = (time.perf_counter() - started) * 1000
    return '%s,"logs":%s,"logs_truncated":%s,"duration_ms":%f}' % (out, json.dumps("".join(inv["logs"])), "true" if inv["truncated"] else "false", guest_ms)


async def _await(v):
    return await v


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def _send(self, status, body):
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        if self.close_connection:
            # Said out loud: a client that pools connections must not reuse this one.
            self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self):
        # A refused body is drained so the connection stays usable; one too large to drain (or
        # of unknown length) ends the connection instead.
        try:
            n = int(self.headers.get("content-length") or 0)
        except ValueError:
            n = -1
        if 0 <= n <= MAX_BODY:
            self.rfile.read(n)
        else:
            self.close_connection = True
        return self._send(401, {"ok": False, "error": {"type": "Unauthorized", "message": "missing or wrong shim key"}})

    def do_GET(self):
        if not _authorized(self.headers):
            return self._refuse()
        if self.path == "/health":
            return self._send(200, {"ok": True, "runtime": "python", "python": sys.version.split()[0], "loaded": _loaded and _loaded["version"], "pid": os.getpid()})
        self._send(404, {"ok": False, "error": {"type": "NotFound", "message": self.path}})

    def do_POST(self):
        if not _authorized(self.headers):
            return self._refuse()
        try:
            n = int(self.headers.get("content-length") or 0)
            if n > MAX_BODY:
                return self._send(413, {"ok": False, "error": {"type": "TooLarge", "message": "request body too large"}})
            body = json.loads(self.rfile.read(n) or b"null")
        except Exception as e:
            return self._send(400, {"ok": False, "error": error_of(e)})
        if self.path == "/load":
            try:
                load(body)
                return self._send(200, {"ok": True})
            except LoadError as e:
                return self._send(200, {"ok": False, "error": e.info})
            except Exception as e:
                return self._send(200, {"ok": False, "error": dict(error_of(e), type="InitError")})
        if self.path == "/invoke":
            if _loaded is None:
                return self._send(409, {"ok": False, "error": {"type": "NotLoaded", "message": "no code loaded"}})
            return self._send(200, invoke(body))
        self._send(404, {"ok": False, "error": {"type": "NotFound", "message": self.path}})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


if __name__ == "__main__":
    server = Server(("0.0.0.0", PORT), Handler)
    sys.__stdout__.write("kiln-shim: python %s listening on :%d\n" % (sys.version.split()[0], PORT))
    sys.__stdout__.flush()
    server.serve_forever()
