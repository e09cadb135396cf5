"""The fast rollout path (sample.RolloutCopy): the same samples as the plain path, from a copy that follows
the student exactly, with shapes that let a compiled decode step compile once."""
import json
import random
import subprocess
import sys

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import CompileConfig, Qwen2Config, Qwen2ForCausalLM

import sample
import scope
import toy
from conftest import ROOT, tiny_args
from sample import RolloutCopy, fixed_rows, generate

MAX_PROMPT, MAX_NEW = 24, 12


def gqa_model(tokenizer, seed=0, head_scale=1.0, tied=True):
    """A tiny Qwen2 with grouped-query attention (8 query heads, 2 KV heads), so the packed path runs."""
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tied)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    return model


def prompts(n, seed=0):
    rng = random.Random(seed)
    return [toy.make_problem(rng)["problem"] + " =" * rng.randint(0, 6) for _ in range(n)]  # assorted widths


def kw(tokenizer, temperature=0.0, max_new=MAX_NEW):
    return dict(stop=[tokenizer.eos_token_id], temperature=temperature, top_p=1.0, top_k=0, max_new_tokens=max_new)


@pytest.mark.parametrize("rows", [1, 3, 4, 12])
def test_static_path_gives_the_plain_paths_greedy_rollouts(tokenizer, rows):
    """Calls of a fixed number of rows (the last one filled up with a repeated row), a static cache of a fixed
    length, and packed GQA attention: token for token what the plain path samples."""
    model = gqa_model(tokenizer)
    fast = RolloutCopy(model, torch.float32, rows=rows, max_len=MAX_PROMPT + MAX_NEW)
    plain = generate(model, tokenizer, prompts(5), 2, **kw(tokenizer))
    static = generate(None, tokenizer, prompts(5), 2, **kw(tokenizer), static=fast)
    assert torch.equal(plain.tokens, static.tokens) and torch.equal(plain.resp, static.resp)
    assert plain.texts == static.texts and torch.equal(plain.truncated, static.truncated)
    assert plain.resp.sum() > 10 * 5  # the rollouts are not empty


def test_packed_gqa_attention_equals_repeated_kv_heads_and_reads_each_once(monkeypatch):
    """One decoded token, 8 query heads on 2 KV heads, a padding mask: the same output as repeating K and V per
    query head (transformers' path under compile), with SDPA called on the 2 KV heads themselves."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 8, 1, 16), torch.randn(3, 2, 10, 16), torch.randn(3, 2, 10, 16)
    mask = torch.ones(3, 1, 1, 10, dtype=torch.bool)
    mask[0, ..., :4] = False
    module = torch.nn.Module()
    module.num_key_value_groups, module.training = 4, False
    shapes, real = [], torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(sample.F, "scaled_dot_product_attention",
                        lambda q, k, v, **a: shapes.append((tuple(q.shape), tuple(k.shape))) or real(q, k, v, **a))
    out, _ = sample.packed_gqa_attention(module, q, k, v, mask, scaling=0.25)
    assert shapes == [((3, 2, 4, 16), (3, 2, 10, 16))]
    want = real(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), attn_mask=mask, scale=0.25).transpose(1, 2)
    assert out.shape == (3, 1, 8, 16) and (out - want).abs().max() < 1e-6


def test_the_copy_decodes_with_packed_attention_and_the_same_logits(tokenizer):
    model = gqa_model(tokenizer)
    fast = RolloutCopy(model, torch.float32, rows=4, max_len=MAX_PROMPT + MAX_NEW)
    assert fast.model.config._attn_implementation == sample.PACKED_GQA
    enc = tokenizer(prompts(4), return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    run = dict(do_sample=False, max_new_tokens=MAX_NEW, output_logits=True, return_dict_in_generate=True,
               pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    packed = fast.model.generate(**enc, cache_implementation="static", max_cache_len=fast.max_len, **run)
    plain = model.generate(**enc, **run)
    assert torch.equal(packed.sequences, plain.sequences)
    gap = max((a - b).abs().max().item() for a, b in zip(packed.logits, plain.logits))
    assert gap < 1e-5, gap


def test_static_samples_follow_the_distribution_a_full_forward_gives(tokenizer):
    """One prompt, 4000 samples at temperature 0.7: the first and the second token (read through the static cache)
    occur as often as the full forward's softmax at that temperature says, within 5 standard errors."""
    model = gqa_model(tokenizer, seed=1, head_scale=20.0, tied=False)  # several likely next tokens
    fast = RolloutCopy(model, torch.float32, rows=1000, max_len=MAX_PROMPT + 2)
    prompt = prompts(1)[0]
    torch.manual_seed(0)
    ro = generate(None, tokenizer, [prompt], 4000, **kw(tokenizer, temperature=0.7, max_new=2), static=fast)
    width = ro.tokens.shape[1] - 2
    first, second = ro.tokens[:, width], ro.tokens[:, width + 1]

    def check(prefix: torch.Tensor, drawn: torch.Tensor):
        with torch.no_grad():
            p = (model(prefix[None]).logits[0, -1, :len(tokenizer)] / 0.7).softmax(-1).double()
        freq = torch.bincount(drawn, minlength=len(p))[:len(p)].double() / len(drawn)
        se = (p * (1 - p) / len(drawn)).sqrt()
        big = p > 0.02
        assert big.sum() >= 3 and p[big].sum() > 0.8  # several likely tokens, so the check has power
        assert ((freq - p).abs()[big] <= 5 * se[big] + 1e-3).all(), (freq[big], p[big])
        assert abs(freq[~big].sum() - p[~big].sum()) <= 5 * (p[~big].sum() / len(drawn)).sqrt() + 1e-3

    real = ro.attn[0, :width]
    check(ro.tokens[0, :width][real], first)
    top = torch.bincount(first).argmax()
    check(torch.cat([ro.tokens[0, :width][real], top[None]]), second[first == top])


def test_rollout_copy_is_refreshed_in_place_and_equals_the_student_bitwise_in_bf16(tokenizer):
    student = gqa_model(tokenizer)
    fast = RolloutCopy(student, torch.bfloat16, rows=2, max_len=16)
    where = {name: p.data_ptr() for name, p in fast.model.named_parameters()}
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    for _ in range(3):
        ids = torch.randint(0, len(tokenizer), (2, 8))
        student(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        fast.refresh(student)
        copy = dict(fast.model.named_parameters())
        for name, p in student.named_parameters():
            assert copy[name].dtype == torch.bfloat16 and torch.equal(copy[name], p.detach().to(torch.bfloat16)), name
        assert {name: p.data_ptr() for name, p in fast.model.named_parameters()} == where  # the same tensors
    assert not any(p.requires_grad for p in fast.model.parameters())


def test_compiled_decoding_compiles_once_across_calls_prompt_widths_and_refreshes(tokenizer):
    """Compiled with dynamo alone (backend "eager", CPU): after the first call, neither new prompt widths nor new
    weights copied in make a new graph, and the compiled path samples what the plain one does."""
    torch._dynamo.reset()
    compile_config = CompileConfig(backend="eager", mode=None)
    compile_config._compile_all_devices = True  # transformers compiles on GPU only unless told
    student = gqa_model(tokenizer)
    fast = RolloutCopy(student, torch.float32, rows=4, max_len=MAX_PROMPT + MAX_NEW, compile=compile_config)
    generate(None, tokenizer, prompts(2, seed=1), 2, **kw(tokenizer), static=fast)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1  # it did compile
    for seed in (2, 3):
        with torch.no_grad():
            for p in student.parameters():
                p.mul_(1.01)
        fast.refresh(student)
        ro = generate(None, tokenizer, prompts(2, seed=seed), 2, **kw(tokenizer), static=fast)
        assert torch.equal(ro.tokens, generate(student, tokenizer, prompts(2, seed=seed), 2, **kw(tokenizer)).tokens)
    assert counters["stats"]["unique_graphs"] == graphs
    torch._dynamo.reset()


def test_fixed_rows_makes_the_fewest_calls_of_one_size():
    assert fixed_rows(16, 100) == 16 and fixed_rows(16, 8) == 8 and fixed_rows(16, 5) == 4  # 4 calls of 4 rows
    assert fixed_rows(10, 4) == 4 and fixed_rows(10, 1) == 1 and fixed_rows(3, 0) == 1       # 3 calls, the last filled


def test_a_prompt_longer_than_the_cache_is_refused_with_the_fields_to_change(tokenizer, capsys):
    fast = RolloutCopy(gqa_model(tokenizer), torch.float32, rows=2, max_len=8)
    with pytest.raises(SystemExit):
        generate(None, tokenizer, prompts(1), 2, **kw(tokenizer), static=fast)
    assert "exceeds the rollout cache (8 tokens: max_prompt_tokens + max_new_tokens)" in capsys.readouterr().err


def test_rollouts_auto_is_plain_on_cpu_and_static_trains_like_plain(tiny_pair, tmp_path):
    student, teacher, data = tiny_pair
    assert scope.parse_config(tiny_args(student, teacher, data, tmp_path / "x")).rollouts == "auto"
    model = toy.tiny_qwen2(300, tied=True, seed=0)
    assert sample.rollout_copy(model, "auto", torch.float32, 16, 76, 20.0) is None          # CPU: plain
    static = sample.rollout_copy(model, "static", torch.float32, 16, 76, 20.0)
    assert isinstance(static, RolloutCopy) and static.rows == 16 and static.max_len == 76
    runs = {}
    for mode in ("plain", "static"):
        scope.main(tiny_args(student, teacher, data, tmp_path / mode, "--top-k", "1", "--max-steps", "3",
                             "--rollouts", mode))
        runs[mode] = [json.loads(x) for x in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in runs["plain"]] == [r["loss"] for r in runs["static"]]
    assert [r["response_len"] for r in runs["plain"]] == [r["response_len"] for r in runs["static"]]


def test_the_step_benchmark_runs_both_rollout_paths_side_by_side():
    out = subprocess.run([sys.executable, "bench/bench_step.py", "--tiny", "--device", "cpu", "--steps", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for row in ("| generate, plain", "| generate, static", "| refresh the rollout copy", "| step, plain",
                "| step, static", "static against plain: generation"):
        assert row in out.stdout, row
