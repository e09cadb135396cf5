"""The fast rollout path (sample.RolloutCopy): the same samples as the plain path, from a copy that follows
the student exactly, with shapes that let a compiled decode step compile once."""
import json
import random
import subprocess
import sys

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import AutoConfig, CompileConfig, Qwen2Config, Qwen2ForCausalLM

import eval as evaluate
import reliability
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
    """Parameters in bf16, bitwise the student's rounded; buffers (RoPE's fp32 inverse frequencies) exactly the
    student's, in dtype and value: after construction and after every refresh."""
    student = gqa_model(tokenizer)
    fast = RolloutCopy(student, torch.bfloat16, rows=2, max_len=16)
    where = {name: p.data_ptr() for name, p in fast.model.named_parameters()}
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    for step in range(4):
        if step:
            ids = torch.randint(0, len(tokenizer), (2, 8))
            student(ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            fast.refresh(student)
        copy = dict(fast.model.named_parameters())
        for name, p in student.named_parameters():
            assert copy[name].dtype == torch.bfloat16 and torch.equal(copy[name], p.detach().to(torch.bfloat16)), name
        buffers = dict(fast.model.named_buffers())
        assert {"model.rotary_emb.inv_freq", "model.rotary_emb.original_inv_freq"} <= set(buffers)
        for name, b in student.named_buffers():
            assert buffers[name].dtype == b.dtype == torch.float32 and torch.equal(buffers[name], b), name
        assert {name: p.data_ptr() for name, p in fast.model.named_parameters()} == where  # the same tensors
    assert not any(p.requires_grad for p in fast.model.parameters())


def test_a_resume_refreshes_parameters_and_buffers_from_the_checkpoint(tiny_pair, tmp_path):
    """After load_checkpoint the copy holds the checkpoint's weights (rounded) and the student's exact buffers."""
    student_dir, teacher, data = tiny_pair
    scope.main(tiny_args(student_dir, teacher, data, tmp_path / "run", "--rollouts", "static"))
    model, _ = sample.load_model(str(student_dir), torch.float32, torch.device("cpu"))
    fast = RolloutCopy(model, torch.bfloat16, rows=2, max_len=16)
    optimizer = torch.optim.AdamW(model.parameters())
    cfg = scope.parse_config(tiny_args(student_dir, teacher, data, tmp_path / "run"))
    assert reliability.load_checkpoint(tmp_path / "run" / "step_000002", model, optimizer, cfg, fast) == 2
    trained, _ = sample.load_model(str(tmp_path / "run"), torch.float32, torch.device("cpu"))
    copy, buffers = dict(fast.model.named_parameters()), dict(fast.model.named_buffers())
    for name, p in trained.named_parameters():
        assert torch.equal(copy[name], p.detach().to(torch.bfloat16)), name
    for name, b in trained.named_buffers():
        assert buffers[name].dtype == torch.float32 and torch.equal(buffers[name], b), name


def long_context_model(seed=0):
    """Two layers, one KV head of 64 dims, RoPE theta 1e6 and an 8,192-token context; attention sharpened so that
    what a token attends to depends on the rotary angles far into the sequence."""
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192, rope_theta=1e6)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    return model


def test_the_bf16_copys_log_probs_do_not_drift_from_the_students_with_position():
    """The copy's log-probs against the student's under bf16 autocast, by 512-token bucket up to 4,096: the gap is
    bf16 rounding, the same at every position. (Rounding RoPE's frequencies too made it grow 7x, 0.012 to 0.095.)"""
    student, n = long_context_model(), 4096
    tokens = torch.randint(0, 300, (2, n))
    attn = torch.ones(2, n, dtype=torch.bool)
    resp = attn.clone()
    resp[:, 0] = False
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = sample.token_logprobs(student, tokens, attn, resp, vocab=300, temperature=1.0)
    fast = RolloutCopy(student, torch.bfloat16, rows=2, max_len=n)
    with torch.no_grad():
        gap = (sample.token_logprobs(fast.model, tokens, attn, resp, vocab=300, temperature=1.0) - ref).abs()[:, 1:]
    buckets = [gap[:, i:i + 512].mean().item() for i in range(0, n - 1, 512)]
    assert 0 < buckets[0] < 0.02                                # bf16 rounding is there, and small
    assert max(buckets) < 1.5 * buckets[0], buckets             # and does not grow with position


def test_inductor_compiles_the_decode_step_once_without_graph_breaks(tokenizer, tmp_path):
    """The real backend (inductor, C++ kernels on CPU): one graph for every call, across prompt widths, refreshes
    and a reload of the weights from a saved state, no graph break, each call's cache the same tensors, and the
    samples of the plain path."""
    torch._dynamo.reset()
    counters.clear()
    compile_config = CompileConfig(backend="inductor", mode=None)
    compile_config._compile_all_devices = True
    student = gqa_model(tokenizer)
    fast = RolloutCopy(student, torch.float32, rows=4, max_len=MAX_PROMPT + MAX_NEW, compile=compile_config)
    optimizer = torch.optim.AdamW(student.parameters())
    sample.save_state(student, optimizer, tmp_path / "state")
    storage = set()
    for call in range(4):
        if call == 3:  # a resume: the saved state loaded back, then the copy refreshed as load_checkpoint does
            sample.load_state(student, optimizer, tmp_path / "state")
        elif call:
            with torch.no_grad():
                for p in student.parameters():
                    p.mul_(1.01)
        fast.refresh(student)
        ro = generate(None, tokenizer, prompts(3, seed=call), 2, **kw(tokenizer), static=fast)
        assert torch.equal(ro.tokens, generate(student, tokenizer, prompts(3, seed=call), 2, **kw(tokenizer)).tokens)
        storage |= {(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in fast.cache.layers}
    assert counters["stats"]["unique_graphs"] == 1 and counters["inductor"]["fxgraph_cache_miss"] + \
        counters["inductor"].get("fxgraph_cache_hit", 0) == 1           # one graph, compiled (or read back) once
    assert not counters["graph_break"]
    assert len(storage) == len(fast.cache.layers)                      # one cache, reused by every call
    torch._dynamo.reset()


def test_every_call_of_a_run_writes_into_the_same_cache_tensors(tiny_pair, tmp_path, monkeypatch):
    """Several generate calls per step (a small KV budget), a quick eval and a later step: the static cache of
    each layer is allocated once and every call writes into that storage."""
    from transformers.cache_utils import StaticLayer
    student, teacher, data = tiny_pair
    seen, update = [], StaticLayer.update

    def recording(layer, key_states, value_states, *args, **kwargs):
        keys, values = update(layer, key_states, value_states, *args, **kwargs)
        seen.append((id(layer), keys.data_ptr(), values.data_ptr()))
        return keys, values
    monkeypatch.setattr(StaticLayer, "update", recording)
    kv_row = sample.kv_bytes_per_token(AutoConfig.from_pretrained(student), 4)   # fp32 on CPU, per token
    scope.main(tiny_args(student, teacher, data, tmp_path / "run", "--rollouts", "static", "--max-steps", "2",
                         "--rollout-kv-gb", str(5 * kv_row * 76 / 1e9), "--eval-every", "1",
                         "--eval-data", str(data), "--eval-limit", "4"))
    assert len({layer for layer, _, _ in seen}) == 3            # three layers ...
    assert len(set(seen)) == 3                                  # ... each with one storage, in every call
    assert len(seen) > 3 * 12 * 4                               # of four calls a step, two steps and evals


def test_fixed_rows_makes_the_fewest_calls_of_one_size():
    assert fixed_rows(16, 100) == 16 and fixed_rows(16, 8) == 8 and fixed_rows(16, 5) == 4  # 4 calls of 4 rows
    assert fixed_rows(10, 4) == 4 and fixed_rows(10, 1) == 1 and fixed_rows(3, 0) == 1       # 3 calls, the last filled


def test_a_prompt_longer_than_the_cache_is_refused_with_the_fields_to_change(tokenizer, capsys):
    fast = RolloutCopy(gqa_model(tokenizer), torch.float32, rows=2, max_len=8)
    with pytest.raises(SystemExit):
        generate(None, tokenizer, prompts(1), 2, **kw(tokenizer), static=fast)
    assert "exceeds the rollout cache (8 tokens: max_prompt_tokens + max_new_tokens)" in capsys.readouterr().err


def test_rollouts_default_to_plain_and_static_trains_like_plain(tiny_pair, tmp_path):
    student, teacher, data = tiny_pair
    assert scope.parse_config(tiny_args(student, teacher, data, tmp_path / "x")).rollouts == "plain"
    model = toy.tiny_qwen2(300, tied=True, seed=0)
    assert sample.rollout_copy(model, "plain", torch.float32, 16, 76, 20.0) is None
    static = sample.rollout_copy(model, "static", torch.float32, 16, 76, 20.0)
    assert isinstance(static, RolloutCopy) and static.rows == 16 and static.max_len == 76
    assert static.compile is None                                                           # compiled on GPU only
    runs = {}
    for mode in ("plain", "static"):
        scope.main(tiny_args(student, teacher, data, tmp_path / mode, "--top-k", "1", "--max-steps", "3",
                             "--rollouts", mode))
        runs[mode] = [json.loads(x) for x in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in runs["plain"]] == [r["loss"] for r in runs["static"]]
    assert [r["response_len"] for r in runs["plain"]] == [r["response_len"] for r in runs["static"]]


def test_quick_eval_steps_log_how_far_the_sampler_is_from_the_learner(tiny_pair, tmp_path):
    """With the fast path in bf16 the copy differs from the fp32 student: the log-ratio on the sampled tokens is
    logged at the quick-eval steps (and only there); the plain path samples with the learner and logs none."""
    student, teacher, data = tiny_pair
    logs = {}
    for mode in ("plain", "static"):
        scope.main(tiny_args(student, teacher, data, tmp_path / mode, "--rollouts", mode, "--max-steps", "3",
                             "--eval-every", "2", "--eval-data", str(data), "--eval-limit", "4"))
        logs[mode] = [json.loads(x) for x in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
    assert all("sampler_logratio" not in r for r in logs["plain"])
    static = {r["step"]: r for r in logs["static"]}
    assert "sampler_logratio" not in static[1]
    for step in (2, 3):                                           # eval_every 2, and the last step
        r = static[step]
        assert r["sampler_abs_logratio"] >= abs(r["sampler_logratio"])
        assert r["sampler_abs_logratio"] < 1e-5                  # on CPU the copy is fp32: the same policy


def test_sampler_gap_is_the_mean_log_ratio_over_response_tokens():
    logp = torch.tensor([[0.0, -1.0, -2.0], [0.0, -0.5, 0.0]])
    sampler = torch.tensor([[0.0, -1.5, -1.0], [0.0, -0.5, 9.0]])
    resp = torch.tensor([[False, True, True], [False, True, False]])
    infos = [{"logp": logp[:1, 1:]}, {"logp": logp[1:, 1:]}]
    batches = [(slice(0, 1), slice(1, 3)), (slice(1, 2), slice(1, 3))]
    gap = evaluate.sampler_gap(infos, batches, sampler, resp, world=1)
    assert gap["sampler_logratio"] == pytest.approx((0.5 - 1.0 + 0.0) / 3)      # tokens 0.5, -1, 0; not the 9
    assert gap["sampler_abs_logratio"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_the_step_benchmark_runs_both_rollout_paths_side_by_side():
    out = subprocess.run([sys.executable, "bench/bench_step.py", "--tiny", "--device", "cpu", "--steps", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for row in ("| generate, plain", "| generate, static", "| refresh the rollout copy", "| step, plain",
                "| step, static", "static against plain: generation"):
        assert row in out.stdout, row


def test_the_gpu_check_runs_every_check_on_cpu_with_tiny_models(capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check
    assert gpu_check.main(["--tiny"]) == 0
    out = capsys.readouterr().out
    for row in ("| greedy agreement", "| |log-prob gap| copy vs student, positions 256-512", "| decode plain, 8 rows",
                "| decode static, 8 rows", "| CUDA graphs over 4 calls | not on CPU",
                "| scope.py plain: 3 steps, save, resume 1 | steps [1, 2, 3, 4]",
                "| scope.py static: 3 steps, save, resume 1 | steps [1, 2, 3, 4]",
                "| scope.py grpo: 3 steps, save, resume 1 | steps [1, 2, 3, 4]",
                "| teacher scoring, 8 rollouts x 32 tokens: all vs the wrong half"):
        assert row in out, row
    assert "0 failed" in out


def test_the_gpu_check_fails_when_one_check_fails_and_still_reports_the_others(monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check

    def broken(device, tiny):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(gpu_check, "check_memory", broken)
    monkeypatch.setattr(gpu_check, "check_runs", lambda tiny: [("scope.py runs", "skipped here", True)])
    assert gpu_check.main(["--tiny"]) == 1
    out = capsys.readouterr().out
    assert "| memory | raised RuntimeError: out of memory | NO |" in out and "| greedy agreement" in out
    assert "1 failed" in out
