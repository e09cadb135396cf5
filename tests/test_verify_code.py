"""verify_code.py: extraction, output comparison, HumanEval's solutions, the benchmarks' forms, and
the sandbox's promises, each against a program that tries to break it.

These tests need bubblewrap and fail, saying how to install it, where it is missing: none is skipped.
"""

import ast
import json
import os
import socket
import subprocess
import threading
import time
import warnings
from pathlib import Path

import pytest

import verify_code as vc

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "code_fixtures"


def fenced(code: str) -> str:
    return f"Here it is.\n```python\n{code}\n```\n"


def stdio(*cases) -> dict:
    return {"form": "stdio", "cases": [list(c) for c in cases], "float_tol": None}


ADD = {"form": "assert", "prelude": "def add(a, b):\n    '''a + b'''\n",
       "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-4, 4) == 0\n",
       "entry": "add"}


@pytest.fixture
def short_limits(monkeypatch):
    """A hostile program's timeout costs a second, not the default six."""
    monkeypatch.setattr(vc, "WALL_S", 1.0)
    monkeypatch.setattr(vc, "TOTAL_S", 4.0)


def harness_processes() -> list[int]:
    """Processes still running a harness (their command line holds --serve), the sandbox's included."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"\0--serve\0" in cmdline and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def assert_nothing_left():
    """The grader's children are gone: nothing of the sandbox outlives a verdict (zombies take a moment)."""
    deadline = time.monotonic() + 3
    while harness_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert harness_processes() == []


# --- extraction and comparison -----------------------------------------------------------------


def test_the_last_python_block_after_the_thinking_is_the_program():
    response = ("<think>```python\nprint('draft')\n```</think>First:\n```python\nprint(1)\n```\n"
                "Output:\n```\n1\n```\nFinal:\n```py\nprint(2)\n```\nExample:\n```text\n2\n```")
    assert vc.extract_code(response) == "print(2)"


def test_an_untagged_block_counts_when_no_block_is_tagged_python():
    assert vc.extract_code("```\nprint(3)\n```") == "print(3)"


def test_no_program_when_the_thinking_or_the_block_never_closes():
    assert vc.extract_code("<think>```python\nprint(1)\n```") is None
    assert vc.extract_code("```python\nprint(1)\n") is None
    assert vc.extract_code("just prose") is None
    verdict = vc.grade_code("<think>still thinking ```python\nprint(1)\n```", ADD)
    assert verdict.status == "no_code" and verdict.reward == 0.0


def test_outputs_match_line_by_line_ignoring_spaces_at_the_ends():
    assert vc.same_output("1 2\n3\n\n", "1  2\n3")
    assert vc.same_output("  yes \n", "yes")
    assert not vc.same_output("1 2 3", "1 2")
    assert not vc.same_output("1\n2", "1 2")
    assert not vc.same_output("YES", "yes")


def test_numbers_match_within_the_tolerance_or_exactly_as_decimals():
    assert vc.same_output("0.3333333", "0.333333", 1e-5)       # |difference| 3.3e-7
    assert not vc.same_output("0.3334", "0.3333", 1e-5)       # |difference| 1e-4
    assert vc.same_output("1.0 2.50", "1 2.5", None)          # equal as decimals
    assert not vc.same_output("0.3333333", "0.333333", None)
    assert not vc.same_output("inf", "1e400", 1e-5)            # only finite numbers are compared


def test_plain_data_crosses_the_boundary_unchanged_and_nothing_else_does():
    value = [1, 2.5, "x", None, True, (1, (2,)), {3, 4}, frozenset({5}), {"k": [1]}, b"\x00\xff", 1 + 2j]
    assert vc.decode(json.loads(json.dumps(vc.encode(value)))) == value
    with pytest.raises(TypeError):
        vc.encode([object()])
    with pytest.raises(ValueError):
        vc.decode({"eval": "__import__('os')"})


# --- HumanEval ---------------------------------------------------------------------------------


def test_humaneval_ships_164_problems_with_its_licence():
    rows = vc.humaneval()
    assert len(rows) == 164 and len({r["id"] for r in rows}) == 164
    assert "MIT License" in (ROOT / "data" / "HumanEval.LICENSE").read_text()


def test_every_canonical_humaneval_solution_passes():
    rows = vc.humaneval()
    verdicts = vc.grade_many([(r["solution"], r["tests"]) for r in rows])
    assert [(r["id"], v) for r, v in zip(rows, verdicts) if not v.passed] == []
    assert_nothing_left()


WRONG = {  # problem: a solution that is wrong in one way; each must fail
    "HumanEval/2": ("off by one", "def truncate_number(number):\n    return number - int(number) + 1e-3\n"),
    "HumanEval/13": ("off by one", "def greatest_common_divisor(a, b):\n    while b:\n        a, b = b, a % b\n"
                                   "    return a + 1\n"),
    "HumanEval/23": ("wrong return type", "def strlen(string):\n    return str(len(string))\n"),
    "HumanEval/30": ("wrong return type", "def get_positive(l):\n    return tuple(e for e in l if e > 0)\n"),
    "HumanEval/34": ("missing case", "def unique(l):\n    return sorted(l)\n"),
    "HumanEval/55": ("missing case", "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
                                     "    return a if n > 1 else 0\n"),
}


@pytest.mark.parametrize("task", WRONG, ids=[f"{t}-{WRONG[t][0]}" for t in WRONG])
def test_a_wrong_humaneval_solution_fails(task):
    row = next(r for r in vc.humaneval() if r["id"] == task)
    verdict = vc.grade_code(fenced(WRONG[task][1]), row["tests"])
    assert verdict.status == "failed", verdict


# --- the benchmarks' forms, on fixtures shaped as the hub's rows ---------------------------------


def test_taco_rows_become_stdio_and_call_tests_and_rows_without_tests_are_dropped(capsys):
    rows = vc.taco(vc._hub_rows(str(FIXTURES / "taco.jsonl"), "train"))
    assert [r["tests"]["form"] for r in rows] == ["stdio", "stdio", "call"]
    assert "1 rows without tests dropped of 4" in capsys.readouterr().err
    hub = vc._hub_rows(str(FIXTURES / "taco.jsonl"), "train")
    solutions = [json.loads(r["solutions"])[0] for r in hub if r["input_output"]]
    verdicts = [vc.grade_code(fenced(s), r["tests"]) for s, r in zip(solutions, rows)]
    assert [v.status for v in verdicts] == ["passed"] * 3
    assert vc.grade_code(fenced("n = int(input())\nprint(round(1 / n, 2))"), rows[1]["tests"]).status == "failed"


def test_the_held_out_codeforces_draw_is_seeded_codeforces_only_and_disjoint_from_training(monkeypatch):
    monkeypatch.setattr(vc, "HELD_OUT", 1)
    hub = vc._hub_rows(str(FIXTURES / "taco.jsonl"), "train")
    held, train = vc.taco(hub, held_out=True), vc.taco(hub, held_out=False)
    assert len(held) == 1 and held[0]["codeforces"]
    assert held == vc.taco(hub, held_out=True)  # the same draw every time
    assert {r["id"] for r in held}.isdisjoint(r["id"] for r in train) and len(held) + len(train) == 3


def test_livecodebench_rows_in_the_window_with_public_and_compressed_private_cases():
    rows = vc.livecodebench(vc._hub_rows(str(FIXTURES / "livecodebench.jsonl"), "test"))
    assert [r["id"] for r in rows] == ["abc999_a", "9999"]  # abc900_a is before the window
    assert len(rows[0]["tests"]["cases"]) == 3 and rows[1]["tests"]["entry"] == "Solution.twoSum"
    right = [fenced("print(max(map(int, input().split())))"),
             fenced("class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
                    "        for i, x in enumerate(nums):\n            if target - x in seen:\n"
                    "                return [seen[target - x], i]\n            seen[x] = i\n")]
    assert [vc.grade_code(s, r["tests"]).status for s, r in zip(right, rows)] == ["passed", "passed"]
    assert vc.grade_code(fenced("print(max(map(int, input().split())) + 0.5)"), rows[0]["tests"]).status == "failed"
    typed = ("class Solution:  # List and Counter unimported, as LiveCodeBench's harness allows\n"
             "    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        seen = Counter()\n"
             "        for i, x in enumerate(nums):\n            if seen[target - x]:\n"
             "                return [seen[target - x] - 1, i]\n            seen[x] = i + 1\n")
    assert vc.grade_code(fenced(typed), rows[1]["tests"]).status == "passed"


def test_compressed_cases_that_name_a_class_are_refused_not_run():
    import base64
    import pickle
    import zlib

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch /tmp/pwned",))
    bad = base64.b64encode(zlib.compress(pickle.dumps(Boom()))).decode()
    with pytest.raises(ValueError, match="refused posix.system"):
        vc._lcb_cases(bad, 7)


def test_a_livecodebench_row_without_tests_is_dropped_and_named(capsys):
    row = {"question_id": "x1", "contest_date": "2024-10-01", "public_test_cases": "[]", "private_test_cases": ""}
    assert vc.livecodebench([row]) == []
    assert "1 rows without test cases dropped: row 0 (x1)" in capsys.readouterr().err


def test_problems_whose_reference_solution_fails_are_dropped_and_counted(capsys):
    rows = vc.taco(vc._hub_rows(str(FIXTURES / "taco.jsonl"), "train"))
    rows[1] = {**rows[1], "solution": fenced("print(0)")}  # a reference that fails its own tests
    rows[2] = {**rows[2], "solution": None}                # and none at all
    kept = vc.keep_solved(rows, "fixture")
    assert kept == rows[:1]
    assert "fixture: 2 of 3 problems dropped" in capsys.readouterr().err


def test_an_unknown_hub_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="not a code dataset this grader reads"):
        vc._hub_rows("someone/else", "train")


def test_tests_of_an_unknown_form_are_a_clear_error():
    with pytest.raises(ValueError, match="field 'form' is 'unit'"):
        vc.grade_code(fenced("print(1)"), {"form": "unit"})


# --- eval.py on a code benchmark ----------------------------------------------------------------


def test_eval_gives_avg_and_pass_at_k_on_humaneval_and_resumes_without_sampling_again(tmp_path, tokenizer,
                                                                                     monkeypatch):
    """Two HumanEval problems, four fixed responses each: problem 0 gets two right programs, a wrong one
    and prose; problem 1 only wrong ones. Avg@4 = 2/8; Pass@1 = (2/4 + 0) / 2; Pass@4 = (1 + 0) / 2."""
    import torch
    from types import SimpleNamespace

    import eval as evaluation
    from conftest import save_tiny

    rows = vc.humaneval()[:2]
    right = rows[0]["solution"]
    wrong = fenced("def has_close_elements(numbers, threshold):\n    return False")
    responses = {"has_close_elements": [right, wrong, "I am not sure.", right],
                 "separate_paren_groups": [fenced("def separate_paren_groups(s):\n    return [s]")] * 4}
    calls = []

    def fixed(model, tokenizer, prompts, n, **kw):
        calls.append(len(prompts))
        texts = [r for prompt in prompts for name, group in responses.items() if name in prompt for r in group]
        return SimpleNamespace(texts=texts, truncated=torch.zeros(len(texts), dtype=torch.bool))
    monkeypatch.setattr(evaluation, "generate", fixed)
    model = save_tiny(tmp_path / "model", tokenizer, len(tokenizer))
    argv = ["--model", str(model), "--benchmarks", "humaneval", "--limit", "2", "--n", "4", "--k", "1,4",
            "--output-dir", str(tmp_path / "out"), "--max-new-tokens", "4", "--dtype", "float32"]
    summary = evaluation.main(argv)["humaneval"]
    assert summary["avg@4"] == pytest.approx(2 / 8)
    assert summary["pass@1"] == pytest.approx((2 / 4 + 0) / 2) and summary["pass@4"] == pytest.approx(0.5)
    lines = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert [line["verdict"] for line in lines if line["index"] == 0] == ["passed", "failed", "no_code", "passed"]
    assert {line["answer"] for line in lines} == {"HumanEval/0", "HumanEval/1"}  # the id, not the tests
    assert calls == [2]
    assert evaluation.main(argv)["humaneval"] == summary and calls == [2]  # resumed: nothing sampled again


# --- the sandbox: each promise against a program that tries to break it ---------------------------


def test_a_fork_bomb_is_contained_and_leaves_no_process(short_limits):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    verdict = vc.grade_code(fenced(bomb), stdio(("", "1")))
    assert verdict.status in ("timeout", "refused"), verdict
    assert_nothing_left()


def test_a_memory_bomb_is_refused():
    verdict = vc.grade_code(fenced("x = bytearray(8 << 30)\nprint(1)"), stdio(("", "1")))
    assert verdict.status == "refused" and "MemoryError" in verdict.detail, verdict
    grow = "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 28))"
    assert vc.grade_code(fenced(grow), stdio(("", "1"))).status == "refused"


def test_an_infinite_loop_and_a_long_sleep_time_out(short_limits):
    start = time.monotonic()
    assert vc.grade_code(fenced("while True:\n    pass"), stdio(("", "1"))).status == "timeout"
    sleeper = "import time\ntime.sleep(60)\ndef add(a, b):\n    return a + b"
    assert vc.grade_code(fenced(sleeper), ADD).status == "timeout"
    assert time.monotonic() - start < 2 * (vc.WALL_S + 2)
    assert_nothing_left()


def test_a_program_cannot_write_outside_its_directory(tmp_path):
    targets = [tmp_path / "escaped", ROOT / "escaped_from_sandbox", Path.home() / "escaped_from_sandbox"]
    writer = ("n = 0\nfor path in %r:\n    try:\n        open(path, 'w').write('x')\n"
              "        n += 1\n    except OSError:\n        pass\nopen('/tmp/mine', 'w').write('ok')\nprint(n)") % (
        [str(t) for t in targets],)
    verdict = vc.grade_code(fenced(writer), stdio(("", "3")))
    assert verdict.status == "failed" and "output '0\\n'" in verdict.detail, verdict  # /tmp worked, the rest not
    assert not any(t.exists() for t in targets)


def test_files_past_their_limit_and_past_the_size_of_tmp_are_refused():
    big = "with open('/tmp/big', 'wb') as f:\n    f.write(bytes(%d))" % (vc.FILE_BYTES + 1)
    many = ("for i in range(8):  # 8 files of 16 MiB, in 64 MiB\n    with open(f'/tmp/part{i}', 'wb') as f:\n"
            "        f.write(bytes(%d))") % (vc.FILE_BYTES - 1)
    for program in (big, many):
        verdict = vc.grade_code(fenced(program + "\nprint(1)"), stdio(("", "1")))
        assert verdict.status == "refused", verdict


def test_a_program_cannot_read_the_graders_environment(monkeypatch):
    secret = "hf_" + os.urandom(8).hex()
    monkeypatch.setenv("HF_TOKEN", secret)
    snoop = ("import os\nfound = os.environ.get('HF_TOKEN', '')\nfor pid in os.listdir('/proc'):\n"
             "    try:\n        found += open(f'/proc/{pid}/environ').read()\n    except OSError:\n        pass\n"
             "print('hf_' + found.split('hf_')[1][:16] if 'hf_' in found else sorted(os.environ))")
    verdict = vc.grade_code(fenced(snoop), stdio(("", secret)))
    output = verdict.detail.partition(", expected")[0]  # the detail quotes the expected output after this
    assert verdict.status == "failed" and secret not in output
    assert "['HOME', 'LANG', 'PATH', 'PWD']" in output, verdict


def test_a_program_cannot_read_the_runs_files(tmp_path):
    private = tmp_path / "run_config.json"
    private.write_text("checkpoint-secret-" + os.urandom(4).hex())
    targets = [str(private), str(ROOT / "README.md"), str(Path.home() / ".bashrc")]
    reader = ("out = []\nfor path in %r:\n    try:\n        out.append(open(path).read()[:40])\n"
              "    except OSError as e:\n        out.append(type(e).__name__)\nprint(*out)") % (targets,)
    verdict = vc.grade_code(fenced(reader), stdio(("", private.read_text())))
    output = verdict.detail.partition(", expected")[0]
    assert verdict.status == "failed" and "checkpoint-secret" not in output
    assert "# scope" not in output and output.count("FileNotFoundError") == 3, verdict


def test_a_program_cannot_reach_the_graders_loopback():
    token = "served-" + os.urandom(4).hex()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.1)
    port, accepted, done = server.getsockname()[1], [], threading.Event()

    def serve():
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            accepted.append(True)
            conn.sendall(token.encode())
            conn.close()
    thread = threading.Thread(target=serve)
    thread.start()
    client = ("import socket\ntry:\n    s = socket.create_connection(('127.0.0.1', %d), timeout=1)\n"
              "    print(s.recv(100).decode())\nexcept OSError as e:\n    print(type(e).__name__)") % port
    verdict = vc.grade_code(fenced(client), stdio(("", token)))
    done.set()
    thread.join()
    server.close()
    assert verdict.status == "failed" and not accepted, verdict


def test_a_program_that_kills_its_parent_its_group_and_everything_it_can_harms_nothing(short_limits):
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        killer = ("import os, signal\nfor target in (lambda: os.kill(os.getppid(), 9), lambda: os.killpg(0, 9),\n"
                  "               lambda: os.kill(-1, 9), lambda: os.kill(1, 9)):\n    try:\n        target()\n"
                  "    except OSError:\n        pass\nprint('still here')")
        for tests in (stdio(("", "1")), ADD):
            assert not vc.grade_code(fenced(killer), tests).passed
        assert bystander.poll() is None  # a process of the grader's user outside the sandbox lives on
        assert vc.grade_code(fenced("def add(a, b):\n    return a + b"), ADD).passed  # and the grader grades on
    finally:
        bystander.kill()
        bystander.wait()
    assert_nothing_left()


def test_a_program_that_stops_reading_its_requests_cannot_hold_the_grader(short_limits):
    thief = ("import os, threading, time\ndef f(x):\n    for fd in range(3, 20):\n        try:\n"
             "            os.write(fd, b'{\"result\": 1}\\n')\n        except OSError:\n            pass\n"
             "    time.sleep(60)")  # a reply forged, then asleep: the next, large request finds no reader
    tests = {"form": "call", "entry": "f", "cases": [[[1], 1], [["x" * (1 << 20)], 1]]}
    start = time.monotonic()
    assert vc.grade_code(fenced(thief), tests).status in ("failed", "timeout")
    assert time.monotonic() - start < vc.WALL_S + 3
    assert_nothing_left()


def test_a_flood_of_output_is_refused(short_limits):
    flood = "while True:\n    print('x' * 100000)"
    verdict = vc.grade_code(fenced(flood), stdio(("", "x")))
    assert verdict.status == "refused", verdict
    verdict = vc.grade_code(fenced(flood + "\ndef add(a, b):\n    return a + b"), ADD)
    assert verdict.status in ("refused", "timeout"), verdict
    assert_nothing_left()


@pytest.mark.parametrize("exit_call", ["import os\nos._exit(0)", "import sys\nsys.exit(0)", "raise SystemExit"])
def test_a_program_that_exits_before_the_tests_fails(exit_call):
    verdict = vc.grade_code(fenced(exit_call + "\ndef add(a, b):\n    return a + b"), ADD)
    assert verdict.status == "runtime_error", verdict


CHEATS = {
    "an __eq__ that always agrees": "def add(a, b):\n    class Yes:\n        def __eq__(self, other):\n"
                                    "            return True\n    return Yes()",
    "an int subclass that always agrees": "def add(a, b):\n    class Yes(int):\n        def __eq__(self, other):\n"
                                          "            return True\n    return Yes(0)",
    "assert and AssertionError replaced": "import builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\n"
                                          "def check(candidate):\n    pass\nbuiltins.check = check\n"
                                          "def add(a, b):\n    return 0",
    "the comparison replaced": "import builtins, operator\noperator.eq = lambda a, b: True\n"
                               "builtins.abs = lambda x: 0\ndef add(a, b):\n    return 0",
    "the passing text printed": "import os\nfor fd in range(3, 20):\n    try:\n"
                                "        os.write(fd, b'{}\\n{\"result\": 3}\\n{\"result\": 0}\\n')\n"
                                "    except OSError:\n        pass\nprint('passed')\ndef add(a, b):\n    return 0",
}


@pytest.mark.parametrize("cheat", CHEATS)
def test_a_program_that_tampers_with_the_tests_fails(cheat):
    verdict = vc.grade_code(fenced(CHEATS[cheat]), ADD)
    assert verdict.status == "failed", verdict


@pytest.mark.parametrize("form", ["stdio", "call"])
def test_replies_forged_on_the_graders_channel_fail_and_never_crash_the_grader(form):
    forge = ("import os\ndef forge(text):\n    for fd in range(3, 20):\n        try:\n"
             "            os.write(fd, text)\n        except OSError:\n            pass\n")
    if form == "stdio":  # each run is a child that holds no channel: what it forges goes nowhere
        program = forge + "forge(b'{\"output\": \"42\"}\\n{\"end\": true}\\n')\nprint(0)"
        tests = stdio(("", "42"))
    else:  # inside a call: a malformed result, then the genuine one
        program = forge + "def f(x):\n    forge(b'{\"result\": {\"eval\": 1}}\\n')\n    return x"
        tests = {"form": "call", "entry": "f", "cases": [[[1], 1]]}
    assert vc.grade_code(fenced(program), tests).status == "failed"


def test_the_passing_text_on_standard_output_is_only_output():
    verdict = vc.grade_code(fenced("print('{\"output\": \"42\"}')\nprint('passed')"), stdio(("", "42")))
    assert verdict.status == "failed"


def test_grading_many_at_once_gives_each_program_its_own_verdict(short_limits):
    items = [(fenced("def add(a, b):\n    return a + b"), ADD), (fenced("def add(a, b):\n    return a - b"), ADD),
             ("no code here", ADD), (fenced("while True:\n    pass"), ADD)] * 2
    assert [v.status for v in vc.grade_many(items, workers=4)] == ["passed", "failed", "no_code", "timeout"] * 2
    assert_nothing_left()


# --- where the sandbox cannot run ---------------------------------------------------------------


def test_without_bwrap_grading_refuses_to_start_and_says_how_to_install_it(monkeypatch):
    vc.check_sandbox.cache_clear()
    monkeypatch.setattr(vc.shutil, "which", lambda name: None)
    try:
        with pytest.raises(vc.SandboxUnavailable, match="apt-get install -y bubblewrap"):
            vc.grade_code(fenced("def add(a, b):\n    return a + b"), ADD)
    finally:
        vc.check_sandbox.cache_clear()


def test_the_process_mode_is_asked_for_by_name_and_warns_once(monkeypatch):
    monkeypatch.setattr(vc, "_warned", False)
    vc.check_sandbox.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        verdicts = [vc.grade_code(fenced("def add(a, b):\n    return a + b"), ADD, sandbox="process") for _ in range(2)]
    vc.check_sandbox.cache_clear()
    assert [v.status for v in verdicts] == ["passed", "passed"]
    assert len([w for w in caught if "sandbox='process'" in str(w.message)]) == 1


def test_the_docstring_states_each_limit_at_its_value():
    doc = vc.__doc__.replace("\n  ", " ")
    for name, said in (("WALL_S", "6 s of wall time per test"), ("TOTAL_S", "30 s for all"), ("CPU_S", "30 s of CPU"),
                       ("MEMORY_BYTES", "1 GiB"), ("PROCESSES", "32 processes"), ("FILE_BYTES", "16 MiB"),
                       ("TMP_BYTES", "64 MiB"), ("OPEN_FILES", "64 open files"), ("OUTPUT_BYTES", "1 MiB of output")):
        value = getattr(vc, name)
        number = float(said.split()[0])
        unit = {"GiB": 1 << 30, "MiB": 1 << 20}.get(said.split()[1], 1)
        assert said in doc and f"({name})" in doc and value == number * unit, name


def test_the_grader_uses_no_regular_expressions():
    tree = ast.parse((ROOT / "verify_code.py").read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "json" in imported and not imported & {"re", "regex"}
