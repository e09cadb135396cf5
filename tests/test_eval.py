"""eval.py: the Pass@k estimators, the graders, and end to end runs on a tiny model: summary, resume (refused when
anything that decides a verdict changed), generate calls within the KV budget, torchrun."""
import itertools
import json
import operator
import os
import re
import shutil
import subprocess
import sys

import math_verify
import pytest
import torch
from transformers import Qwen2ForCausalLM

import eval as evaluation
import scope
from conftest import ROOT, next_token_model, tiny_args
from sample import PROMPT_SUFFIX, build_prompt, load_model
from verify import extract_answer, grade

GOLDS = ["7", "8", "7", "7", "8"]


@pytest.fixture(scope="module")
def coin(tmp_path_factory, tokenizer):
    """A tiny Qwen2 that answers "7" (p = 0.64) or "8" and stops, so that verdicts are mixed.

    Attention and MLP outputs are zeroed, so the next token depends on the current token alone:
    any prompt token leads to a digit (hidden direction 0), a digit leads to EOS (direction 1).
    """
    seven, eight = tokenizer.convert_tokens_to_ids(["7", "8"])
    model = next_token_model(tokenizer, {seven: 1, eight: 1},   # logits 23.2 and 22.6 for "7" and "8", then EOS
                             {(seven, 0): 2.05, (eight, 0): 2.0, (tokenizer.eos_token_id, 1): 2.0})
    path = tmp_path_factory.mktemp("coin") / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_bench(path, golds=GOLDS):
    """Problems "i+gold" with their gold, and a `solution` field that no response can match."""
    path.write_text("".join(json.dumps({"problem": f"{i}+{g}", "answer": g, "solution": "see the book"}) + "\n"
                            for i, g in enumerate(golds)))
    return path


@pytest.fixture
def bench(tmp_path):
    return write_bench(tmp_path / "tiny.jsonl")


def eval_args(model, data, out, *extra) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--output-dir", str(out), "--n", "6", "--k", "1,2,6",
            "--temperature", "1.0", "--top-p", "1.0", "--top-k", "0", "--max-new-tokens", "4",
            "--batch-size", "2", "--dtype", "float32", *extra]


def sample_lines(out) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


# -----------------------------------------------------------------------------
# Estimators

def test_pass_at_k_is_the_fraction_of_k_subsets_holding_a_correct_sample():
    for n in range(1, 7):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert evaluation.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_edges_no_correct_all_correct_and_k_equal_n():
    assert evaluation.pass_at_k(32, 0, 32) == 0.0
    assert evaluation.pass_at_k(32, 32, 1) == 1.0
    assert evaluation.pass_at_k(32, 1, 32) == 1.0            # k = n: at least one correct
    assert evaluation.pass_at_k(4, 1, 1) == pytest.approx(0.25)  # k = 1 is plain accuracy
    with pytest.raises(ValueError):
        evaluation.pass_at_k(4, 1, 5)


def test_bootstrap_pass_at_k_is_the_mean_over_all_draws_with_replacement():
    for n, c, k in [(4, 1, 2), (4, 2, 3), (5, 0, 2), (5, 5, 4), (3, 1, 3)]:
        samples = [True] * c + [False] * (n - c)
        draws = list(itertools.product(samples, repeat=k))
        brute = sum(any(d) for d in draws) / len(draws)
        assert evaluation.pass_at_k_bootstrap(n, c, k) == pytest.approx(brute, abs=1e-12)
    assert evaluation.pass_at_k_bootstrap(4, 2, 2) < evaluation.pass_at_k(4, 2, 2)  # repeats can miss


def test_k_above_n_is_refused_with_a_message(capsys):
    with pytest.raises(SystemExit):
        evaluation.parse_args(["--model", "m", "--n", "4", "--k", "1,8"])
    assert "--k 8: Pass@k needs 1 <= k <= n, and n is 4" in capsys.readouterr().err


def test_shipped_benchmarks_load_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = evaluation.parse_args(["--model", "m", "--benchmarks", f"{evaluation.PAPER_BENCHMARKS},gsm8k",
                                  "--limit", "3"])
    data = evaluation.load_benchmarks(args)
    assert list(data) == ["aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench", "gsm8k"]
    assert all(len(rows) == 3 and rows[0]["problem"] and rows[0]["answer"] for rows in data.values())


# -----------------------------------------------------------------------------
# End to end on the tiny model

def test_summary_is_what_the_samples_file_gives(coin, bench, tmp_path, capsys):
    out = tmp_path / "out"
    summary = evaluation.main(eval_args(coin, bench, out))
    lines = sample_lines(out)
    assert sorted((r["index"], r["sample"]) for r in lines) == [(i, j) for i in range(5) for j in range(6)]
    for r in lines:
        assert r["extracted"] == extract_answer(r["response"]) and r["correct"] == grade(r["response"], r["answer"])
    c = [sum(r["correct"] for r in lines if r["index"] == i) for i in range(5)]
    assert 0 < sum(c) < 30                                    # mixed verdicts: the check below means something
    row = json.loads((out / "summary.json").read_text())["tiny"]
    assert row == summary["tiny"]
    assert row["avg@6"] == pytest.approx(sum(c) / 30)
    for k in (1, 2, 6):
        assert row[f"pass@{k}"] == pytest.approx(sum(evaluation.pass_at_k(6, ci, k) for ci in c) / 5)
    assert summary["average"]["avg@6"] == pytest.approx(row["avg@6"])  # one benchmark: macro mean = itself
    assert f"{100 * row['avg@6']:.1f}" in capsys.readouterr().out.split("average")[1]


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(coin, bench, tmp_path, monkeypatch):
    whole = evaluation.main(eval_args(coin, bench, tmp_path / "whole"))
    real, calls = evaluation.sample_and_grade, []

    def interrupted_after_one_batch(model, tokenizer, prompts, *a, **kw):
        if calls:
            raise KeyboardInterrupt
        calls.append(len(prompts))
        return real(model, tokenizer, prompts, *a, **kw)

    monkeypatch.setattr(evaluation, "sample_and_grade", interrupted_after_one_batch)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        evaluation.main(eval_args(coin, bench, out))
    with open(out / "samples.jsonl", "a") as f:
        f.write('{"benchmark": "tiny", "index": 2, "sam')     # a write cut off mid-line

    def counting(model, tokenizer, prompts, *a, **kw):
        calls.append(len(prompts))
        return real(model, tokenizer, prompts, *a, **kw)

    monkeypatch.setattr(evaluation, "sample_and_grade", counting)
    resumed = evaluation.main(eval_args(coin, bench, out))
    assert calls == [2, 2, 1]                                 # the first batch was not generated again
    assert resumed == whole
    key = operator.itemgetter("index", "sample")
    assert sorted(sample_lines(out), key=key) == sorted(sample_lines(tmp_path / "whole"), key=key)


def test_rerun_with_other_sampling_settings_is_refused(coin, bench, tmp_path):
    out = tmp_path / "out"
    evaluation.main(eval_args(coin, bench, out, "--limit", "1"))
    with pytest.raises(SystemExit, match="temperature: 1.0 there, 0.5 now"):
        evaluation.main(eval_args(coin, bench, out, "--limit", "1", "--temperature", "0.5"))


def test_rows_are_split_into_generate_calls_of_bounded_size_in_sample_order(coin):
    model, tokenizer = load_model(str(coin), torch.float32, torch.device("cpu"))
    real, rows = model.generate, []

    def recording(**kw):
        rows.append(kw["input_ids"].shape[0])
        return real(**kw)

    model.generate = recording
    results = evaluation.sample_and_grade(model, tokenizer, ["1+6", "2+6", "3+5"], ["7", "8", "8"], n=5,
                                          stop=[tokenizer.eos_token_id], temperature=1.0, max_new_tokens=4,
                                          judge=evaluation.grader("verify"), max_rows=4)
    assert rows == [4, 4, 4, 3]                               # 15 rows, at most 4 per call
    assert [len(r) for r in results] == [5, 5, 5]
    assert all(s["correct"] == (s["response"] == gold) for r, gold in zip(results, ["7", "8", "8"]) for s in r)


def test_greedy_samples_are_graded_against_each_problems_own_gold(coin):
    model, tokenizer = load_model(str(coin), torch.float32, torch.device("cpu"))
    results = evaluation.sample_and_grade(model, tokenizer, ["3+4", "4+4", "5+2"], ["7", "8", "7"], n=2,
                                          stop=[tokenizer.eos_token_id], temperature=0.0, max_new_tokens=4,
                                          judge=evaluation.grader("verify"))
    assert [[s["correct"] for s in r] for r in results] == [[True, True], [False, False], [True, True]]  # always 7


def test_torchrun_ranks_merge_into_the_single_process_summary(coin, bench, tmp_path):
    # batch size 1: each problem is seeded alone, so sampling does not depend on the split
    single = evaluation.main(eval_args(coin, bench, tmp_path / "single", "--batch-size", "1"))
    out = tmp_path / "ranks"
    # torchrun's own parser rejects --n (an ambiguous abbreviation of its options): --samples is its alias
    args = ["--samples" if a == "--n" else a for a in eval_args(coin, bench, out, "--batch-size", "1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "eval.py", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = json.loads((out / "summary.json").read_text())
    assert written == {"grader": "verify", "pass_estimator": "unbiased", **single}
    assert not list(out.glob("samples.rank*.jsonl"))          # folded into samples.jsonl
    assert len(sample_lines(out)) == 5 * 6


def test_max_new_tokens_is_capped_by_the_models_context_and_said_once(coin, bench, tmp_path, capsys):
    args = eval_args(coin, bench, tmp_path / "out")
    args[args.index("--max-new-tokens") + 1] = "100000"      # far past the tiny model's 256 positions
    summary = evaluation.main([*args, "--repetition-penalty", "1.08"])
    out = capsys.readouterr().out
    assert out.count("is capped") == 1 and "context of 256 tokens" in out, out
    assert summary["average"]["problems"] == len(GOLDS)
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert settings["repetition_penalty"] == 1.08 and settings["max_new_tokens"] == 100000


# -----------------------------------------------------------------------------
# Graders

def test_math_verify_grades_as_the_authors_evaluation_does():
    whole, last_box = evaluation.grader("math-verify", "math500"), evaluation.grader("math-verify", "aime24")
    assert whole("so the answer is \\boxed{\\frac{1}{2}}", "0.5") == {"extracted": "\\frac{1}{2}", "correct": True}
    assert whole("\\boxed{\\frac{1}{3}}", "0.5")["correct"] is False
    assert whole("The answer is 0.5", "\\frac12")["correct"] is True          # no box needed on MATH500
    assert last_box("The answer is 12", "12") == {"extracted": None, "correct": False}  # AIME: the box or nothing
    assert last_box("first \\boxed{5}, then \\boxed{12}", "12")["correct"] is True      # the last box
    assert last_box("first \\boxed{12}, then \\boxed{5}", "12")["correct"] is False


@pytest.mark.parametrize("name", ["verify", "math-verify"])
def test_either_grader_grades_only_what_follows_a_finished_thought(name):
    judge = evaluation.grader(name, "aime24")
    cut = "<think>\nfirst guess \\boxed{2}? Wait, let me re-check"              # stopped mid-thought
    assert judge(cut, "2") == {"extracted": None, "correct": False}
    closed = "<think>\nmaybe \\boxed{3}\n</think>\nSo \\boxed{2}."
    assert judge(closed, "2")["correct"] is True and judge(closed, "3")["correct"] is False


def test_math_verify_missing_or_with_strict_is_refused_with_what_to_do(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        evaluation.parse_args(["--model", "m", "--grader", "math-verify", "--strict"])
    assert "--strict is verify.py's training mode" in capsys.readouterr().err
    real = evaluation.importlib.util.find_spec
    monkeypatch.setattr(evaluation.importlib.util, "find_spec",
                        lambda name: None if name == "math_verify" else real(name))   # as if not installed
    with pytest.raises(SystemExit):
        evaluation.parse_args(["--model", "m", "--grader", "math-verify"])
    assert "pip install math-verify" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["verify", "math-verify"])
def test_the_chosen_grader_is_the_one_called_and_is_recorded(coin, bench, tmp_path, monkeypatch, name):
    calls = {"verify": 0, "math-verify": 0}

    def counted(which, real):
        def call(*a, **kw):
            calls[which] += 1
            return real(*a, **kw)
        return call

    monkeypatch.setattr(evaluation, "grade", counted("verify", evaluation.grade))
    monkeypatch.setattr(math_verify, "verify", counted("math-verify", math_verify.verify))
    out = tmp_path / "out"
    summary = evaluation.main(eval_args(coin, bench, out, "--grader", name))
    assert calls == {"verify": 0, "math-verify": 0, name: 5 * 6}              # one call per sample, this grader's
    assert json.loads((out / "summary.json").read_text())["grader"] == name
    assert json.loads((out / "settings.json").read_text())["grader"] == name
    lines = sample_lines(out)
    assert summary["tiny"]["avg@6"] == pytest.approx(sum(r["correct"] for r in lines) / 30)
    assert all(r["correct"] == (r["response"] == r["answer"]) for r in lines)   # bare digits: both graders agree


# -----------------------------------------------------------------------------
# A resume must grade what the directory's samples were graded on

def test_rerunning_a_finished_directory_with_another_answer_field_is_refused(coin, bench, tmp_path):
    """The samples hold verdicts against the old field: reading them back reported 63% where the new field
    gives 0%. A fresh directory grades against the new field."""
    assert evaluation.main(eval_args(coin, bench, tmp_path / "out"))["tiny"]["avg@6"] > 0.5
    with pytest.raises(SystemExit, match="data.tiny.answer_field: 'answer' there, 'solution' now"):
        evaluation.main(eval_args(coin, bench, tmp_path / "out", "--answer-field", "solution"))
    fresh = evaluation.main(eval_args(coin, bench, tmp_path / "fresh", "--answer-field", "solution"))
    assert fresh["tiny"]["avg@6"] == 0.0


@pytest.mark.parametrize("change", ["grader", "data content", "model weights"])
def test_a_resume_that_changes_what_decides_a_verdict_is_refused_by_name(coin, bench, tmp_path, change):
    model = shutil.copytree(coin, tmp_path / "model")                          # ours to change
    out = tmp_path / "out"
    evaluation.main(eval_args(model, bench, out, "--limit", "1"))
    extra = []
    if change == "grader":
        expected = "grader: 'verify' there, 'math-verify' now"
        extra = ["--grader", "math-verify"]
    elif change == "data content":
        before = evaluation.sha256(bench)
        write_bench(bench, ["7", "8", "7", "7", "9"])                           # one gold changed
        expected = f"data.tiny.sha256: '{before}' there, '{evaluation.sha256(bench)}' now"
    else:
        before = evaluation.sha256(model / "model.safetensors")
        weights, _ = load_model(str(model), torch.float32, torch.device("cpu"))
        with torch.no_grad():
            weights.lm_head.weight.mul_(2)
        weights.save_pretrained(model)
        expected = (f"model_weights.model.safetensors: '{before}' there, "
                    f"'{evaluation.sha256(model / 'model.safetensors')}' now")
    with pytest.raises(SystemExit, match=re.escape(expected)):
        evaluation.main(eval_args(model, bench, out, "--limit", "1", *extra))


def test_a_resume_may_add_a_benchmark_and_records_it(coin, bench, tmp_path):
    out = tmp_path / "out"
    evaluation.main(eval_args(coin, bench, out, "--limit", "1"))
    other = write_bench(tmp_path / "other.jsonl", ["8"])
    summary = evaluation.main([*eval_args(coin, bench, out, "--limit", "1"), "--data", str(other)])
    assert list(summary) == ["tiny", "other", "average"]
    data = json.loads((out / "settings.json").read_text())["data"]
    assert data["other"] == {"sha256": evaluation.sha256(other), "problem_field": "problem",
                             "answer_field": "answer", "skip_bad_rows": False}
    assert data["tiny"]["sha256"] == evaluation.sha256(bench)


def test_a_hub_model_is_identified_by_the_revision_it_resolves_to(monkeypatch):
    snapshot = "/cache/models--Qwen--Qwen2.5-0.5B/snapshots/060db6499f32faf8b98477b0a26969ef7d8b9987/config.json"
    monkeypatch.setattr(evaluation, "cached_file", lambda repo, name: snapshot if repo == "Qwen/Qwen2.5-0.5B" else None)
    assert evaluation.model_weights("Qwen2.5-0.5B") == {"hub": "Qwen/Qwen2.5-0.5B",
                                                        "revision": "060db6499f32faf8b98477b0a26969ef7d8b9987"}


# -----------------------------------------------------------------------------
# Generate calls within the KV-cache budget

def test_a_batch_is_split_into_generate_calls_whose_kv_cache_fits_the_budget(coin, bench, tmp_path, tokenizer,
                                                                            monkeypatch):
    # The tiny model's config: 3 layers x 2 KV heads x 32 dims x (K and V) x 4 bytes (fp32 on CPU) = 1,536 bytes
    # per token. A row holds its prompt (12 tokens) and 4 new ones: 24,576 bytes. 125,000 bytes fit 5 rows, not 6.
    assert len(tokenizer(build_prompt(tokenizer, "0+7", PROMPT_SUFFIX, True)).input_ids) == 12
    real, rows = Qwen2ForCausalLM.generate, []

    def recording(self, **kw):
        rows.append(kw["input_ids"].shape[0])
        return real(self, **kw)

    monkeypatch.setattr(Qwen2ForCausalLM, "generate", recording)
    summary = evaluation.main(eval_args(coin, bench, tmp_path / "out", "--kv-gb", "0.000125"))
    assert rows == [5, 5, 2, 5, 5, 2, 5, 1]          # batches of 2, 2 and 1 problems x 6 samples
    assert all(r * 16 * 1_536 <= 125_000 for r in rows)
    assert summary["average"]["problems"] == 5


def test_a_run_resumed_before_its_first_checkpoint_keeps_one_eval_line_per_step(tiny_pair, tmp_path):
    """A demo killed before its only checkpoint starts again from step 0 and measures step 0 again: eval.jsonl
    then holds that step once, with no second line."""
    student, teacher, data = tiny_pair
    run = tmp_path / "run"
    args = tiny_args(student, teacher, data, run, "--eval-every", "1", "--eval-data", str(data), "--eval-limit", "2",
                     "--resume", "auto")
    scope.main(args)
    for checkpoint in run.glob("step_*"):                     # as if killed before any checkpoint was written
        shutil.rmtree(checkpoint)
    scope.main(args)
    steps = [json.loads(line)["step"] for line in (run / "eval.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]


def test_the_demo_checkpoints_before_its_last_step_so_a_stopped_demo_resumes_mid_way():
    cfg = scope.parse_config(["--config", str(ROOT / "configs" / "toy.yaml")])
    assert cfg.save_every < cfg.max_steps and cfg.keep_checkpoints >= 1
