"""`CodeExecutionReward`: run generated Python against unit tests, in a sandbox.

Each candidate program runs in its own fresh interpreter (`python -s -P -B`
with an environment built from scratch: the parent's variables, `PYTHONPATH`
among them, never reach it; no user site, neither the current directory
nor a script directory on `sys.path`, no bytecode written; `-S` too unless
`site_packages=True`; this is `-I`'s isolation except that the seeded
`PYTHONHASHSEED` is honoured), started in a new session (its own process
group) with a fresh `tempfile.TemporaryDirectory` as its working directory
and `HOME`/`TMPDIR`.
The reward is the fraction of the tests that pass; every way a candidate
can go wrong is a reward of 0 with a counted reason, never an exception in
the trainer and never a hang longer than the timeout.

What protects the parent, from the strongest layer down:

1. **A separate process, killed by the clock.** The parent waits at most
   `timeout` seconds of wall-clock time from the spawn, then kills the
   whole process group (`os.killpg(..., SIGKILL)`). A `while True: pass`
   costs the timeout and no more.
2. **OS resource limits** (`resource.setrlimit`, soft = hard, so the
   candidate cannot raise them back unless it runs as root):
   `RLIMIT_AS` (address space: the interpreter's own size at start-up plus
   `memory_mb`), `RLIMIT_CPU` (`ceil(timeout) + 1` s, SIGXCPU then SIGKILL),
   `RLIMIT_FSIZE` (`max_output_bytes`, for stdout/stderr, which go to a file
   in the temporary directory, and for every file written; `SIGXFSZ` is set
   back to its default action, so an over-long write kills the process:
   infinite printing can fill neither the parent's memory nor the disk),
   `RLIMIT_NOFILE` (64), `RLIMIT_NPROC` (0: no new process or thread; not
   enforced for root) and `RLIMIT_CORE` (0). They are set by the child's
   first statements, before it reads the candidate, NOT in a `preexec_fn`:
   `preexec_fn` runs Python between `fork` and `exec` and can deadlock in a
   multi-threaded parent, and the trainer's process (TensorFlow, plus the
   thread pool running candidates in parallel) always is one.
3. **No network namespace** when the kernel allows it: the child calls
   `unshare(CLONE_NEWNET)` (as root) or `unshare(CLONE_NEWUSER |
   CLONE_NEWNET)` (unprivileged user namespaces) before the candidate runs,
   so it sees only a loopback device that is down. `SandboxResult.
   network_isolated` says whether that worked on this machine.
4. **Python audit hooks** (PEP 578, `sys.addaudithook`, which cannot be
   removed once added) installed before the candidate is compiled. They
   refuse, with a `PermissionError`, and record the first violation even
   if the candidate catches the error:
   - `forbidden_file_write`: opening a file for writing (any of `O_WRONLY`,
     `O_RDWR`, `O_CREAT`, `O_TRUNC`, `O_APPEND`), removing, renaming,
     linking, `chmod`/`chown`/`utime`/`truncate`/`mkdir`/`rmdir`/
     `shutil.rmtree` of any path whose real path (symbolic links resolved)
     is outside the temporary directory; any such call relative to a
     directory descriptor (`dir_fd`); more than 100 opens for writing;
   - `forbidden_file_read`: reading or listing anything under the
     protected directories (by default the parent's working directory, the
     run directory in practice), except the interpreter's own `sys.path`;
   - `forbidden_network`: every `socket.*` event (creating a socket,
     connect, bind, name lookups);
   - `forbidden_process`: `subprocess.Popen`, `os.system`, `os.fork`,
     `os.forkpty`, `os.exec*`, `os.posix_spawn*`, `os.spawn*`, `os.kill`,
     `os.killpg`;
   - `forbidden_system`: `ctypes` (loading libraries, calling C functions),
     `resource.setrlimit`/`prlimit`.

**This is not a security boundary against malicious code.** A Python-level
guard can be walked around by code that sets out to (through objects the
harness leaves reachable, through `os.open(..., dir_fd=...)` whose audit
event carries no directory, through the C API of an extension module), and
the child runs as the parent's user. The separate process, the clock and
the OS limits hold whatever the code does; the audit hooks reliably catch
what model-written code does by accident or by imitation of its training
data (writing files, downloading, shelling out). For untrusted code, run
the reward inside a container or under seccomp/gVisor, as an unprivileged
user with a read-only root file system.

The failure reasons (`REASONS`, one per candidate):

| reason | what happened | reward |
|---|---|---|
| `passed` | every test passed | 1 |
| `exception` | a test (an `assert` that failed counts) or the tests' setup raised; or the program raised while it was being defined | passed / total |
| `syntax_error` | the program does not compile | 0 |
| `timeout` | the wall clock or the CPU limit ran out | 0 |
| `memory` | `MemoryError` (the address-space limit), or the process died of memory | 0 |
| `output_limit` | stdout/stderr or a written file went past `max_output_bytes` | 0 |
| `forbidden_file_write`, `forbidden_file_read`, `forbidden_network`, `forbidden_process`, `forbidden_system` | see above | 0 |
| `crash` | the interpreter died another way (a segfault, `os._exit`) without a result | 0 |

The tests (a Python source string per prompt) are split into units, each
worth the same: every top-level statement that holds an `assert` (a bare
`assert`, or a `for`/`if`/`with`/`try` block with one inside; not a
`def`/`class`) is one test, and so is every top-level function whose name
starts with `test` (called without arguments after the whole source has
run, in order). Other statements (imports, helpers, `def check(...)`) are
setup, run in source order. An `assert` of a constant (`assert True`)
is setup, not a test: it would pay garbage for nothing. A source with no
test at all is one test, passed when it runs without an exception (e.g.
`check(f)` calling a function of asserts). The program runs first, with
`__name__ == "__candidate__"` (its `if __name__ == "__main__":` demo code is
skipped); then the tests run in the same namespace, with `__name__ ==
"__main__"`. A failed test is recorded and the next one runs; a timeout,
memory, output or forbidden failure anywhere makes the whole candidate 0.

Not under XLA (`jit_compile=True`), not on TPU: the reward is a host
Python function reached through `tf.numpy_function` (see `PythonReward`).
Linux only (`resource`, process groups, `/proc`).
"""

import ast
import collections
import dataclasses
import functools
import json
import math
import numbers
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from keras_selffb.rewards.python_reward import PythonReward

REASONS = (
    "passed",
    "exception",
    "syntax_error",
    "timeout",
    "memory",
    "output_limit",
    "forbidden_file_write",
    "forbidden_file_read",
    "forbidden_network",
    "forbidden_process",
    "forbidden_system",
    "crash",
)
# Reasons that make the whole candidate 0, whatever passed before.
FATAL_REASONS = frozenset(REASONS) - {"passed", "exception"}
PROGRAM_MODES = ("candidate", "prompt+candidate")
MIN_MEMORY_MB = 16
MIN_OUTPUT_BYTES = 1024
_OPEN_FILES = 64
_RESULT_BYTES = 1 << 20  # the most the parent reads back from the result pipe
_TAIL_BYTES = 2000  # output tail kept in a result, for diagnostics
# The environment is built from scratch (nothing of the parent's), so `-E`
# adds nothing; `-s` (no user site) and `-P` (no script directory or cwd on
# sys.path) are the rest of `-I`, which would also ignore PYTHONHASHSEED.
_FLAGS = ("-s", "-P", "-B") if sys.version_info >= (3, 11) else ("-I", "-B")
_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

# The child: limits, payload, network namespace, audit hook, then the
# candidate and the tests. Run as `python <_FLAGS> [-S] -c _HARNESS CONFIG`.
_HARNESS = r'''
import ast, errno, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
del sys.argv[1:]
_write, _exit, _dumps = os.write, os._exit, json.dumps
RESULT_FD, NONCE = cfg["result_fd"], cfg["nonce"]
state = {"forbidden": None, "writes": 0, "busy": False, "netns": False}


def report(reason, statuses=(), detail=""):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # the candidate's output, for the result's tail
        except BaseException:
            pass
    try:
        data = _dumps({"nonce": NONCE, "reason": reason, "tests": list(statuses),
                       "detail": str(detail)[:2000], "network_isolated": state["netns"]}).encode()
        view = memoryview(data)
        while view:
            view = view[_write(RESULT_FD, view):]
    except BaseException:
        _exit(3)
    _exit(0)


def hard_limit(name, soft, hard=None):
    resource.setrlimit(getattr(resource, name), (soft, soft if hard is None else hard))


with open("/proc/self/statm") as f:
    size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
hard_limit("RLIMIT_AS", size + cfg["memory_bytes"])
hard_limit("RLIMIT_CPU", cfg["cpu_seconds"], cfg["cpu_seconds"] + 1)
hard_limit("RLIMIT_FSIZE", cfg["max_output_bytes"])
hard_limit("RLIMIT_NOFILE", cfg["open_files"])
hard_limit("RLIMIT_CORE", 0)
hard_limit("RLIMIT_NPROC", 0)
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; an over-long write kills

with open(cfg["payload"], encoding="utf-8") as f:
    payload = json.load(f)
os.remove(cfg["payload"])

if cfg["isolate_network"]:
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        for flags in (0x40000000, 0x10000000 | 0x40000000):  # CLONE_NEWNET, | CLONE_NEWUSER
            if libc.unshare(flags) == 0:
                state["netns"] = True
                break
        del libc, ctypes
        for name in [m for m in sys.modules if m == "ctypes" or m.startswith("ctypes.")]:
            del sys.modules[name]
    except Exception:
        pass

import random
random.seed(cfg["seed"])
del random
ROOT = os.path.realpath(cfg["root"])
PROTECTED = [os.path.realpath(p) for p in cfg["protected"]]
READABLE = [os.path.realpath(p) for p in sys.path if p]
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PROCESS = {"subprocess.Popen", "os.system", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn",
           "os.spawn", "os.kill", "os.killpg", "os.startfile", "pty.spawn"}
SYSTEM = {"resource.setrlimit", "resource.prlimit"}
# event: (positions of paths that must stay inside ROOT, positions of dir_fd arguments)
MUTATE = {"os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
          "os.rename": ((0, 1), (2, 3)), "os.link": ((0, 1), (2, 3)), "os.symlink": ((1,), (2,)),
          "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)), "os.utime": ((0,), (3,)),
          "os.truncate": ((0,), ()), "os.chflags": ((0,), ()), "os.lchflags": ((0,), ()),
          "os.setxattr": ((0,), ()), "os.removexattr": ((0,), ()), "shutil.rmtree": ((0,), (1,)),
          "os.mkfifo": ((0,), (2,)), "os.mknod": ((0,), (3,))}


def within(path, base):
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def resolve(path):
    if isinstance(path, int) or path is None:
        return None
    return os.path.realpath(os.fsdecode(path))


def deny(reason, what):
    if state["forbidden"] is None:
        state["forbidden"] = (reason, what)
    raise PermissionError(f"sandbox: {what} is not allowed")


def check_read(path):
    path = resolve(path)
    if path is None or within(path, ROOT) or any(within(path, p) for p in READABLE):
        return
    if any(within(path, p) for p in PROTECTED):
        deny("forbidden_file_read", f"reading {path}")


def check_write(path, what):
    real = resolve(path)
    if real is not None and not within(real, ROOT):
        deny("forbidden_file_write", f"{what} {real}")


def audit(event, args):
    if state["busy"]:
        return
    state["busy"] = True
    try:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(flags, int) and flags & WRITE_FLAGS) or (
                isinstance(mode, str) and any(c in mode for c in "wax+"))
            if writing:
                check_write(path, "writing")
                if not isinstance(path, int):
                    state["writes"] += 1
                    if state["writes"] > 100:
                        deny("forbidden_file_write", "opening more than 100 files for writing")
            else:
                check_read(path)
        elif event in MUTATE:
            paths, dir_fds = MUTATE[event]
            if any(i < len(args) and args[i] not in (None, -1) for i in dir_fds):
                deny("forbidden_file_write", f"{event} relative to a directory descriptor")
            for i in paths:
                if i < len(args):
                    check_write(args[i], event)
        elif event in ("os.listdir", "os.scandir"):
            check_read(args[0] if args else None)
        elif event.startswith("socket."):
            deny("forbidden_network", event)
        elif event in PROCESS:
            deny("forbidden_process", event)
        elif event in SYSTEM or event.startswith("ctypes."):
            deny("forbidden_system", event)
    finally:
        state["busy"] = False


def failure(exc):
    """The reason a BaseException stands for."""
    if state["forbidden"] is not None:
        return state["forbidden"][0]
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return "output_limit"
    return "exception"


def describe(exc):
    return f"{type(exc).__name__}: {exc}"[:500]


sys.addaudithook(audit)
tree = ast.parse(payload["tests"], "<tests>")
try:
    program = compile(payload["program"], "<candidate>", "exec", dont_inherit=True)
except MemoryError as e:
    report("memory", detail=describe(e))
except BaseException as e:
    report("syntax_error", detail=describe(e))

namespace = {"__name__": "__candidate__", "__builtins__": __builtins__}
try:
    exec(program, namespace)
except BaseException as e:
    report(failure(e), [False] * payload["total"], "the program raised " + describe(e))
if state["forbidden"] is not None:
    report(state["forbidden"][0], detail=state["forbidden"][1])

namespace["__name__"] = "__main__"
statuses, first = [], None


def run(kind, code_or_name):
    global first
    try:
        if kind == "call":
            namespace[code_or_name]()
        else:
            exec(code_or_name, namespace)
        ok, why = True, None
    except BaseException as e:
        ok, why, detail = False, failure(e), describe(e)
        if first is None:
            first = (why, detail)
    if state["forbidden"] is not None:
        report(state["forbidden"][0], detail=state["forbidden"][1])
    if why is not None and why != "exception":
        report(why, detail=detail)
    if kind != "setup":
        statuses.append(ok)


def statements(indices):
    module = ast.Module(body=[tree.body[i] for i in indices], type_ignores=[])
    return compile(module, "<tests>", "exec", dont_inherit=True)


for kind, indices in payload["units"]:
    run(kind, statements(indices))
for name in payload["test_functions"]:
    run("call", name)
report("passed" if all(statuses) else first[0], statuses, "" if first is None else first[1])
'''


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run gave.

    Attributes:
        passed: int. Tests that passed (0 for every reason in `FATAL_REASONS`).
        total: int. Tests in the test source (see the module docstring).
        reason: str. One of `REASONS`.
        detail: str. The first error, one line (empty when all passed).
        seconds: float. Wall-clock time of the run, spawn to reaping.
        output: str. The last 2000 characters of the candidate's
            stdout + stderr.
        network_isolated: bool. Whether the run had its own empty network
            namespace (besides the audit hook).
    """

    passed: int
    total: int
    reason: str
    detail: str = ""
    seconds: float = 0.0
    output: str = ""
    network_isolated: bool = False

    @property
    def reward(self):
        """`passed / total`, in [0, 1]."""
        return self.passed / self.total


def _contains_assert(node):
    if isinstance(node, ast.Assert):
        return not isinstance(node.test, ast.Constant)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
        return False
    return any(_contains_assert(child) for child in ast.iter_child_nodes(node))


@functools.lru_cache(maxsize=4096)
def plan_tests(tests):
    """How a test source is split into units (see the module docstring).

    Args:
        tests: str. Python source of the tests.

    Returns:
        `(units, test_functions, total)`: `units` is a tuple of `(kind,
        statement indices)` with kind `"setup"` or `"test"`, run in order;
        `test_functions` the names of the `test*` functions called after
        them; `total` the number of tests.

    Raises:
        TypeError: `tests` is not a str.
        ValueError: it is empty or does not parse.

    Example:

    >>> units, functions, total = plan_tests("import math\\nassert f(1) == 1\\n"
    ...                                      "for x in [2, 3]:\\n    assert f(x) == x\\n"
    ...                                      "assert True\\ndef test_zero():\\n    assert f(0) == 0\\n")
    >>> units, functions, total
    ((('setup', (0,)), ('test', (1,)), ('test', (2,)), ('setup', (3,)), ('setup', (4,))), ('test_zero',), 3)
    """
    if not isinstance(tests, str):
        raise TypeError(f"tests must be Python source as a str; got {type(tests).__name__}.")
    if not tests.strip():
        raise ValueError("tests are empty: give Python source with at least one statement.")
    try:
        tree = ast.parse(tests, "<tests>")
    except (SyntaxError, ValueError) as e:
        where = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
        raise ValueError(f"the tests do not parse{where}: {getattr(e, 'msg', e)}.") from None
    units, functions = [], []
    for i, node in enumerate(tree.body):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            functions.append(node.name)
        units.append(("test" if _contains_assert(node) else "setup", (i,)))
    total = sum(kind == "test" for kind, _ in units) + len(functions)
    if total == 0:  # one test: the whole source runs without an exception
        return (("test", tuple(range(len(tree.body)))),), (), 1
    return tuple(units), tuple(dict.fromkeys(functions)), total


def _check_number(name, value, low, inclusive=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}.")
    if value < low or (value == low and not inclusive):
        raise ValueError(f"{name} must be {'>=' if inclusive else '>'} {low}; got {value!r}.")
    return value


def check_limits(timeout, memory_mb, max_output_bytes):
    """Validates the sandbox limits; one-line `ValueError` on a bad one."""
    _check_number("timeout", timeout, 0)
    _check_number("memory_mb", memory_mb, MIN_MEMORY_MB, inclusive=True)
    _check_number("max_output_bytes", max_output_bytes, MIN_OUTPUT_BYTES, inclusive=True)


def default_protected_dirs():
    """The parent's working directory: what the child may not read by default."""
    return (os.getcwd(),)


def _read_pipe(fd, deadline):
    """Reads `fd` until EOF or the deadline; returns `(bytes, timed_out)`."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    chunks, size = [], 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            return b"".join(chunks), True
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks), False
        if size < _RESULT_BYTES:
            chunks.append(chunk)
            size += len(chunk)


def _kill_group(proc):
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            kill()
        except (ProcessLookupError, PermissionError):
            pass


def _tail(path):
    try:
        with open(path, "rb") as f:
            f.seek(max(os.fstat(f.fileno()).st_size - _TAIL_BYTES, 0))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _classify_death(returncode, output):
    """The reason of a child that left no result."""
    if returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode == -signal.SIGXFSZ:
        return "output_limit"
    if any(s in output for s in ("MemoryError", "Cannot allocate memory", "out of memory", "bad_alloc")):
        return "memory"
    if returncode == -signal.SIGKILL:  # not ours: the kernel's out-of-memory killer
        return "memory"
    return "crash"


def run_sandboxed(
    program,
    tests,
    timeout=5.0,
    memory_mb=256,
    max_output_bytes=1 << 20,
    protected_dirs=None,
    site_packages=False,
    isolate_network=True,
    seed=0,
):
    """Runs `program` then `tests` in a fresh sandboxed interpreter.

    Never raises for anything the program does; raises only for bad
    arguments (and tests that do not parse, a mistake of the caller).

    Args:
        program: str. The candidate's Python source.
        tests: str. Python source of the tests (see the module docstring
            for how it is split into tests).
        timeout: float > 0. Wall-clock seconds for the whole run, from the
            spawn (interpreter start-up, about 30 ms, included). Defaults
            to `5.0`.
        memory_mb: number >= 16. Address space the candidate may add to the
            interpreter's own (`RLIMIT_AS`). Defaults to `256`.
        max_output_bytes: int >= 1024. Cap on stdout + stderr and on any
            written file (`RLIMIT_FSIZE`). Defaults to 1 MiB.
        protected_dirs: iterable of paths the candidate may not read or
            list, or None for `default_protected_dirs()` (the parent's
            working directory). The interpreter's `sys.path` stays readable.
        site_packages: bool. Let the candidate import installed packages
            (drops `-S`). Defaults to `False` (standard library only).
        isolate_network: bool. Try an empty network namespace too.
            Defaults to `True`.
        seed: int. The child's `PYTHONHASHSEED` (set and dict orders of
            strings) and `random.seed`, so a run is repeatable (Python
            3.11+; 3.10 runs with `-I`, whose hash seed is random). Defaults
            to `0`.

    Returns:
        A `SandboxResult`.

    Example:

    >>> result = run_sandboxed("def f(x):\\n    return x * 2\\n",
    ...                        "assert f(1) == 2\\nassert f(2) == 4\\nassert f(3) == 5\\n", timeout=10)
    >>> result.passed, result.total, result.reason, round(result.reward, 4)
    (2, 3, 'exception', 0.6667)
    >>> run_sandboxed("while True: pass", "assert f(1) == 2", timeout=0.5).reason
    'timeout'
    """
    if not isinstance(program, str):
        raise TypeError(f"program must be Python source as a str; got {type(program).__name__}.")
    check_limits(timeout, memory_mb, max_output_bytes)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= 4294967295:
        raise ValueError(f"seed must be an integer in [0, 2**32 - 1]; got {seed!r}.")
    units, functions, total = plan_tests(tests)
    protected = default_protected_dirs() if protected_dirs is None else tuple(protected_dirs)
    for path in protected:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"protected_dirs holds paths; got {type(path).__name__}.")
    with tempfile.TemporaryDirectory(prefix="selffb-sandbox-", ignore_cleanup_errors=True) as root:
        payload = os.path.join(root, ".payload.json")
        with open(payload, "w", encoding="utf-8") as f:
            json.dump({"program": program, "tests": tests, "units": units, "test_functions": functions,
                       "total": total}, f)
        nonce = secrets.token_hex(16)
        read_fd, write_fd = os.pipe()
        config = {
            "result_fd": write_fd, "nonce": nonce, "payload": payload, "root": root,
            "protected": [os.fspath(p) for p in protected],
            "memory_bytes": int(memory_mb * (1 << 20)), "cpu_seconds": math.ceil(timeout) + 1,
            "max_output_bytes": int(max_output_bytes), "open_files": _OPEN_FILES,
            "isolate_network": bool(isolate_network), "seed": int(seed),
        }
        command = [sys.executable, *_FLAGS] + ([] if site_packages else ["-S"])
        command += ["-c", _HARNESS, json.dumps(config)]
        env = dict(_ENV, HOME=root, TMPDIR=root, TMP=root, TEMP=root, PYTHONHASHSEED=str(seed))
        output_path = os.path.join(root, ".output")
        start = time.monotonic()
        try:
            with open(output_path, "wb") as output:
                proc = subprocess.Popen(
                    command, cwd=root, env=env,
                    stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                    pass_fds=(write_fd,), close_fds=True, start_new_session=True,
                )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        try:
            data, timed_out = _read_pipe(read_fd, start + timeout)
        finally:
            os.close(read_fd)
        result = _parse_result(data, nonce)
        if result is None and not timed_out:
            try:  # the child closed its end but may still be running
                proc.wait(timeout=max(start + timeout - time.monotonic(), 0.001))
            except subprocess.TimeoutExpired:
                timed_out = True
        _kill_group(proc)  # the result is in, or time is up; strays go too
        proc.wait()
        seconds = time.monotonic() - start
        output = _tail(output_path)
    if timed_out and result is None:
        return SandboxResult(0, total, "timeout", f"killed after {timeout:g} s of wall-clock time",
                             seconds, output)
    if result is None:
        reason = _classify_death(proc.returncode, output)
        return SandboxResult(0, total, reason, f"the interpreter exited with code {proc.returncode} "
                             "and no result", seconds, output)
    statuses, reason = result["tests"], result["reason"]
    if reason not in REASONS or (reason not in FATAL_REASONS and len(statuses) != total):
        return SandboxResult(0, total, "crash", f"malformed result: {reason!r}, {len(statuses)} tests",
                             seconds, output)
    passed = 0 if reason in FATAL_REASONS else sum(bool(s) for s in statuses)
    return SandboxResult(passed, total, reason, result["detail"], seconds, output,
                         bool(result["network_isolated"]))


def _parse_result(data, nonce):
    try:
        result = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(result, dict) or result.get("nonce") != nonce:
        return None
    if not isinstance(result.get("tests"), list) or not isinstance(result.get("reason"), str):
        return None
    result.setdefault("detail", "")
    return result


class CodeExecutionReward(PythonReward):
    """Pass rate of generated Python against unit tests, run in a sandbox.

    The ids are detokenized in the graph (as by `PythonReward`, of which
    this is one); on the host each row becomes a program and a test source,
    every distinct `(program, tests)` pair of the batch runs once in
    `run_sandboxed`, in parallel (a thread pool, each thread waiting on its
    own child process), and the row's reward is `passed / total`.

    Args:
        tokenizer: the run's tokenizer (`keras_selffb.text`).
        tests: where each row's test source comes from. Either a mapping
            `{prompt text: test source}` (keys are the prompts as the reward
            sees them: detokenized, possibly left-truncated by packing; a key
            is tried as is, then stripped of surrounding whitespace) or a
            callable `tests(prompt, reference) -> str`. For prompts too long
            to be a reliable key, pack a short id (a task id) as the
            reference reply and look it up: `tests=lambda prompt, reference:
            suite[reference]`. The reference column is not trained on by
            `ReinforceTrainer` unless `gamma < 1`.
        program: how a row's program is built: `"candidate"` (the reply is
            the whole program; the default), `"prompt+candidate"` (the
            prompt text then the reply: HumanEval-style completions of a
            function signature and docstring) or a callable
            `program(prompt, candidate, reference) -> str`.
        timeout: float > 0. Wall-clock seconds per candidate. Defaults to `5.0`.
        memory_mb: number >= 16. Memory per candidate. Defaults to `256`.
        max_output_bytes: int >= 1024. Output cap per candidate. Defaults
            to 1 MiB.
        max_workers: int >= 1 or None. Candidates run at once. Defaults to
            `None`: the number of CPUs.
        protected_dirs: paths the candidates may not read, or None (the
            working directory at each call). Pass the run directory when it
            is elsewhere.
        site_packages: bool. Let candidates import installed packages.
            Defaults to `False`.
        seed: int. The candidates' hash seed and `random.seed` (see
            `run_sandboxed`). Defaults to `0`.
        name: str. The logged name. Defaults to `"code_execution"`.

    Attributes:
        counts: `collections.Counter` of `REASONS` over every candidate
            scored since the last `reset_counts()`.
        last_results: list of `SandboxResult`, one per row of the last call.
        calls, candidates, seconds: reward calls, candidates and host
            seconds since the last `reset_counts()`.

    Example:

    >>> from keras_selffb.text import CharTokenizer
    >>> tokenizer = CharTokenizer.train(["def f(x): return x*2 1+() =\\n"])
    >>> reward = CodeExecutionReward(tokenizer, {"f": "assert f(1) == 2\\nassert f(2) == 5\\n"}, timeout=10)
    >>> [r.reward for r in reward.score_texts(["f", "f"], ["def f(x): return x*2", "def f(x) return"], ["", ""])]
    [0.5, 0.0]
    >>> dict(reward.reset_counts())
    {'exception': 1, 'syntax_error': 1}
    """

    default_name = "code_execution"

    def __init__(
        self,
        tokenizer,
        tests,
        program="candidate",
        timeout=5.0,
        memory_mb=256,
        max_output_bytes=1 << 20,
        max_workers=None,
        protected_dirs=None,
        site_packages=False,
        seed=0,
        name=None,
    ):
        if not (isinstance(tests, Mapping) or callable(tests)):
            raise TypeError(
                "tests must be a mapping {prompt: test source} or a callable tests(prompt, reference); "
                f"got {type(tests).__name__}."
            )
        if not (callable(program) or program in PROGRAM_MODES):
            raise ValueError(f"program must be one of {PROGRAM_MODES} or a callable; got {program!r}.")
        check_limits(timeout, memory_mb, max_output_bytes)
        if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)
                                        or max_workers < 1):
            raise ValueError(f"max_workers must be an integer >= 1 or None; got {max_workers!r}.")
        super().__init__(self._rewards, tokenizer, name=name or self.default_name)
        self.tests = tests
        self.program = program
        self.limits = {"timeout": timeout, "memory_mb": memory_mb, "max_output_bytes": max_output_bytes,
                       "site_packages": bool(site_packages), "seed": seed}
        self.protected_dirs = None if protected_dirs is None else tuple(protected_dirs)
        self.max_workers = max_workers or os.cpu_count() or 1
        self._lock = threading.Lock()
        self.last_results = []
        self.reset_counts()

    def reset_counts(self):
        """Returns the reason counts so far (a `Counter`) and starts new ones."""
        with self._lock:
            counts = getattr(self, "counts", collections.Counter())
            self.counts = collections.Counter()
            self.calls, self.candidates, self.seconds = 0, 0, 0.0
        return counts

    def reason_counts(self):
        """A copy of the reason counts, every reason in `REASONS` present."""
        with self._lock:
            return {reason: self.counts.get(reason, 0) for reason in REASONS}

    def _tests_for(self, prompt, reference):
        if isinstance(self.tests, Mapping):
            for key in (prompt, prompt.strip()):
                if key in self.tests:
                    return self.tests[key]
            raise ValueError(f"CodeExecutionReward {self.name!r}: no tests for the prompt {prompt[-80:]!r}.")
        return self.tests(prompt, reference)

    def _program_for(self, prompt, candidate, reference):
        if self.program == "candidate":
            return candidate
        if self.program == "prompt+candidate":
            return prompt + candidate
        source = self.program(prompt, candidate, reference)
        if not isinstance(source, str):
            raise TypeError(f"CodeExecutionReward {self.name!r}: program(...) returned {type(source).__name__}, "
                            "not a str.")
        return source

    def score_texts(self, prompts, candidates, references):
        """Runs every row and counts its reason; returns a list of `SandboxResult`.

        Args:
            prompts, candidates, references: lists of str of one length.
        """
        if not len(prompts) == len(candidates) == len(references):
            raise ValueError(
                f"prompts, candidates and references differ in length: {len(prompts)}, "
                f"{len(candidates)}, {len(references)}."
            )
        start = time.monotonic()
        jobs = [
            (self._program_for(p, c, r), self._tests_for(p, r)) for p, c, r in zip(prompts, candidates, references)
        ]
        unique = list(dict.fromkeys(jobs))
        for _, tests in unique:
            plan_tests(tests)  # a broken test suite is the caller's error: raise here, not in a thread

        def run(job):
            return run_sandboxed(*job, protected_dirs=self.protected_dirs, **self.limits)

        if unique:
            with ThreadPoolExecutor(max_workers=min(self.max_workers, len(unique))) as pool:
                done = dict(zip(unique, pool.map(run, unique)))
        results = [done[job] for job in jobs]
        with self._lock:
            self.counts.update(r.reason for r in results)
            self.calls += 1
            self.candidates += len(results)
            self.seconds += time.monotonic() - start
            self.last_results = results
        return results

    def _rewards(self, prompts, candidates, references):
        results = self.score_texts(prompts, candidates, references)
        return np.asarray([r.reward for r in results], dtype=np.float32)

    def __repr__(self):
        return (f"CodeExecutionReward(name={self.name!r}, program={self.program!r}, "
                f"timeout={self.limits['timeout']}, memory_mb={self.limits['memory_mb']})")
