"""Training on code: a step's rollouts are programs, graded in the sandbox and routed by its verdict."""
import json
import socket

import pytest

import eval as evaluation
import sample
import scope
import toy
from conftest import tiny_args

SUM = "Read two integers a and b from standard input and print a + b."
RIGHT = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
WRONG = "```python\na, b = map(int, input().split())\nprint(a - b)\n```"


def hostile(port: int) -> str:
    """Prints the right answer only if it could reach the grader's machine on 127.0.0.1."""
    return (f"```python\nimport socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            f"a, b = map(int, input().split())\nprint(a + b)\n```")


@pytest.fixture(scope="module")
def long_pair(tmp_path_factory, tokenizer):
    """Tiny random student and teacher with a context of 1,024 tokens: a code prompt says how to answer at length."""
    root = tmp_path_factory.mktemp("code_pair")
    for name, seed in (("student", 1), ("teacher", 2)):
        model = toy.tiny_qwen2(len(tokenizer), tied=True, seed=seed)
        model.config.max_position_embeddings = 1024
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "student", root / "teacher"


def test_one_step_on_code_routes_a_right_a_wrong_and_a_hostile_program_by_the_sandboxs_verdict(long_pair, tmp_path,
                                                                                               monkeypatch):
    student, teacher = long_pair
    data = tmp_path / "taco.jsonl"
    tests = json.dumps({"inputs": ["1 2\n", "10 -4\n"], "outputs": ["3\n", "6\n"]})
    data.write_text(json.dumps({"question": SUM, "input_output": tests}) + "\n")
    listener = socket.create_server(("127.0.0.1", 0))  # a service on the grader's machine the program must not reach
    programs = [RIGHT, WRONG, hostile(listener.getsockname()[1])]

    def emits_fixed_programs(model, tok, prompts, group_size, **kw):  # the "student" writes these three, always
        ids = [tok(p, add_special_tokens=False).input_ids + [tok.eos_token_id] for p in programs]
        ro = sample.given_rollouts(tok, prompts, [ids] * len(prompts), kw["stop"], model.device)
        kw["on_call"](0, ro)  # one generate call: graded, and sent on, as it returns
        return ro

    monkeypatch.setattr(scope, "generate", emits_fixed_programs)
    seen, real = [], scope.gather_rollouts
    monkeypatch.setattr(scope, "gather_rollouts", lambda infos, ro, correct, *a: seen.append((ro.texts, correct))
                        or real(infos, ro, correct, *a))
    with listener:
        scope.main(tiny_args(student, teacher, data, tmp_path / "run", "--task", "code", "--group-size", "3",
                             "--batch-size", "1",
                             "--max-steps", "1", "--save-every", "1", "--max-prompt-tokens", "512"))
    texts, correct = seen[0]
    assert [t.strip() for t in texts] == programs
    assert correct.tolist() == [True, False, False]
    m = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert m["frac_correct"] == pytest.approx(1 / 3) and m["time_grade"] > 0
    assert 0 < m["teacher_tokens"] < m["response_tokens"]  # the teacher scored the two programs that failed


def test_a_code_run_without_a_usable_sandbox_stops_at_start_saying_how_to_install_it(tiny_pair, tmp_path, monkeypatch,
                                                                                    capsys):
    student, teacher, data = tiny_pair
    monkeypatch.setattr("shutil.which", lambda name: None)  # as on a machine without bubblewrap
    monkeypatch.setattr(evaluation, "check_sandbox", evaluation.check_sandbox.__wrapped__)  # not the answer cached for this one
    with pytest.raises(SystemExit):
        scope.main(tiny_args(student, teacher, data, tmp_path / "run", "--task", "code"))
    err = capsys.readouterr().err
    assert "apt-get install -y bubblewrap" in err and "--code-sandbox process" in err


def test_code_data_without_tests_is_refused_naming_the_file_and_field(tiny_pair, tmp_path, capsys):
    student, teacher, data = tiny_pair  # math rows: their answers are numbers, not tests
    with pytest.raises(SystemExit):
        scope.main(tiny_args(student, teacher, data, tmp_path / "run", "--task", "code", "--code-sandbox", "process"))
    err = capsys.readouterr().err
    assert f"{data}: no row holds tests in TACO's form" in err


def test_the_papers_code_configuration_trains_on_taco_with_the_sandbox():
    cfg = scope.parse_config(["--config", "configs/r1-distill-1.5b_skywork-7b_code.yaml"])
    assert (cfg.task, cfg.code_sandbox, cfg.train_data) == ("code", "bwrap", "BAAI/TACO")
    assert (cfg.student, cfg.teacher, cfg.group_size) == ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
                                                          "Skywork/Skywork-OR1-7B", 8)
