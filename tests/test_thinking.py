"""A prompt that leaves a thought open (DeepSeek-R1-Distill's template ends it with "<think>\\n"): responses are
graded as if that opening were theirs, in training and in evaluation. Found from the template alone."""
import json
import random

import pytest
import torch
from transformers import Qwen2ForCausalLM

import eval as evaluate
import scope
import toy
from conftest import save_tiny, tiny_args
from sample import build_prompt, generate, thinking_opened
from verify import grade

# The parts of DeepSeek-R1-Distill-Qwen's current chat template that decide what the model sees (its
# tokenizer_config.json): BOS, user and assistant markers, and the generation prompt that opens a thought.
R1_CHAT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
           "{% else %}{{ '<｜Assistant｜>' + m['content'] + '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}")
CUT = r"first guess \boxed{2}? Wait, let me re-check"                 # max_new_tokens ran out mid-thought
CLOSED = r"maybe \boxed{3}? No.</think>So the answer is \boxed{2}."


@pytest.fixture(scope="module")
def r1_tokenizer():
    """A toy BPE carrying R1-Distill's special tokens as its tokenizer declares them: BOS and EOS special, the
    turn markers and the think tags ordinary added tokens (so decoding keeps </think>)."""
    rng = random.Random(0)
    rows = [toy.make_problem(rng) for _ in range(50)]
    tok = toy.train_tokenizer([f"{r['problem']}\n{toy.SUFFIX}" for r in rows] + [r["solution"] for r in rows]
                              + [CUT, CLOSED])
    tok.add_tokens(["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"], special_tokens=True)
    tok.add_tokens(["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"])
    tok.bos_token, tok.eos_token = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    tok.chat_template = R1_CHAT
    return tok


def scripted(text: str, tok):
    """Qwen2ForCausalLM.generate replaced by one that answers every prompt with `text` (then EOS, unless cut)."""
    ids = tok(text, add_special_tokens=False).input_ids + ([] if text == CUT else [tok.eos_token_id])

    def fake_generate(self, input_ids, **kwargs):
        return torch.cat([input_ids, torch.tensor(ids).expand(len(input_ids), -1)], 1)
    return fake_generate


def test_the_open_thought_is_found_from_the_template(r1_tokenizer):
    assert thinking_opened(r1_tokenizer) == "<think>\n"
    closed = r1_tokenizer.chat_template.replace("<think>\\n", "<think>\\n</think>\\n")   # a template that skips it
    r1_tokenizer.chat_template, saved = closed, r1_tokenizer.chat_template
    try:
        assert thinking_opened(r1_tokenizer) == ""
    finally:
        r1_tokenizer.chat_template = saved


@pytest.mark.parametrize("text, gold, verdict", [(CUT, "2", False), (CLOSED, "2", True), (CLOSED, "3", False)])
def test_a_cut_thought_earns_nothing_and_a_closed_one_is_graded_on_what_follows(r1_tokenizer, monkeypatch, text,
                                                                                 gold, verdict):
    tok = r1_tokenizer
    model = toy.tiny_qwen2(len(tok), tied=True, seed=0)
    monkeypatch.setattr(Qwen2ForCausalLM, "generate", scripted(text, tok))
    for chat, opened in ((True, "<think>\n"), (False, "")):
        prompt = build_prompt(tok, "3+4", "Box it.", chat_template=chat)
        ro = generate(model, tok, [prompt], 2, stop=[tok.eos_token_id], temperature=0.6, top_p=1.0, top_k=0,
                      max_new_tokens=64)
        assert ro.texts == [opened + text] * 2
    chat_texts = generate(model, tok, [build_prompt(tok, "3+4", "", True)], 1, stop=[tok.eos_token_id],
                          temperature=0.6, top_p=1.0, top_k=0, max_new_tokens=64).texts
    assert grade(chat_texts[0], gold) is verdict
    if text == CUT:
        assert grade(text, gold)            # the same response without the opening: the cut thought used to pass


def test_training_rewards_no_unfinished_thought(r1_tokenizer, tiny_pair, tmp_path, monkeypatch):
    _, _, data = tiny_pair
    student = save_tiny(tmp_path / "student", r1_tokenizer, len(r1_tokenizer), seed=1)
    rows = [{"problem": "3+4", "answer": "2"}] * 8
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for text, frac in ((CUT, 0.0), (CLOSED, 1.0)):
        monkeypatch.setattr(Qwen2ForCausalLM, "generate", scripted(text, r1_tokenizer))
        out = tmp_path / f"run_{frac}"
        scope.main(tiny_args(student, student, tmp_path / "train.jsonl", out, "--max-steps", "1", "--save-every", "1",
                             "--max-new-tokens", "64"))
        assert json.loads((out / "metrics.jsonl").read_text())["frac_correct"] == frac


def test_eval_samples_show_the_answer_that_was_graded(r1_tokenizer, tmp_path, monkeypatch):
    model = save_tiny(tmp_path / "model", r1_tokenizer, len(r1_tokenizer), seed=1)
    data = tmp_path / "two.jsonl"
    data.write_text(json.dumps({"problem": "3+4", "answer": "2"}) + "\n")
    for text, extracted, correct in ((CUT, None, False), (CLOSED, "2", True)):
        monkeypatch.setattr(Qwen2ForCausalLM, "generate", scripted(text, r1_tokenizer))
        out = tmp_path / f"eval_{correct}"
        evaluate.main(["--model", str(model), "--data", str(data), "--n", "2", "--max-new-tokens", "64",
                       "--output-dir", str(out)])
        samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
        assert [s["response"] for s in samples] == ["<think>\n" + text] * 2
        assert [(s["extracted"], s["correct"]) for s in samples] == [(extracted, correct)] * 2
