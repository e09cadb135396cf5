"""plan.py: the memory plan is read from config.json alone, and its numbers add up by hand."""
import sys
from types import SimpleNamespace

import pytest
import yaml
from transformers import AutoModelForCausalLM, Qwen2Config

import plan
from conftest import ROOT

# Tiny Qwen2: H 32, I 64, 4 heads x 8 dims, 2 KV heads, 2 layers, 100 vocabulary rows.
H, I, LAYERS, KV_HEADS, HEAD_DIM, VOCAB = 32, 64, 2, 2, 8, 100


def save_config(path, **overrides):
    shape = dict(vocab_size=VOCAB, hidden_size=H, intermediate_size=I, num_hidden_layers=LAYERS,
                 num_attention_heads=4, num_key_value_heads=KV_HEADS, tie_word_embeddings=True)
    Qwen2Config(**{**shape, **overrides}).save_pretrained(path)
    return str(path)


@pytest.fixture
def cfg(tmp_path):
    return SimpleNamespace(
        student=save_config(tmp_path / "student"), teacher=save_config(tmp_path / "teacher", hidden_size=64, num_hidden_layers=8),
        batch_size=8, group_size=4, max_prompt_tokens=16, max_new_tokens=48, micro_batch_tokens=512,
        logprob_chunk_tokens=64, gradient_checkpointing=True, dtype="bfloat16", shard_teacher=True,
        rollout_kv_gb=1e-4, gpus=1, gpu_memory_gb=80.0, rollouts="plain", keep_checkpoints=2)


def phases(cfg) -> dict[str, float]:
    student, teacher = plan.read_shape("student", cfg.student), plan.read_shape("teacher", cfg.teacher)
    return {name: gb for name, gb, _, _ in plan.estimate(cfg, student, teacher)[0]}


def test_no_weights_are_loaded(cfg, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("the plan loaded weights")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    assert plan.print_plan(cfg)
    assert "| peak |" in capsys.readouterr().out


def test_parameter_counts_match_the_model_by_hand(cfg):
    embed = VOCAB * H                                               # tied: the head is the embedding
    attention = H * H + H + 2 * (H * KV_HEADS * HEAD_DIM + KV_HEADS * HEAD_DIM) + H * H  # q, k, v biased; o
    layer = attention + 3 * H * I + 2 * H                           # MLP, two norms
    shape = plan.read_shape("student", cfg.student)
    assert shape.layer_params == layer
    assert shape.params == embed + LAYERS * layer + H               # + final norm
    assert shape.root_params == embed + H


def test_kv_of_one_call_is_rows_times_tokens_times_kv_bytes(cfg):
    cfg.gpus, cfg.batch_size = 2, 8                                  # FSDP: the cache is bf16
    per_token = 2 * LAYERS * KV_HEADS * HEAD_DIM * 2                 # K and V, 2 layers, 2 heads, 8 dims, 2 bytes
    width = 16 + 48
    cfg.rollout_kv_gb = 3.5 * per_token * width / 1e9               # room for three and a half rows
    student, teacher = plan.read_shape("student", cfg.student), plan.read_shape("teacher", cfg.teacher)
    _, sizes = plan.estimate(cfg, student, teacher)
    assert sizes["kv_token"] == per_token == 128
    assert sizes["rows"] == 3 and sizes["calls"] == 6                # 4 prompts x 4 rollouts per GPU, 3 at a time
    assert sizes["kv_gb"] * 1e9 == pytest.approx(3 * width * per_token, abs=1e-3)


def test_one_gpu_caches_kv_in_fp32_and_sizes_its_calls_with_4_bytes_per_value(cfg):
    per_token = 2 * LAYERS * KV_HEADS * HEAD_DIM * 4                 # fp32: 4 bytes per value
    cfg.rollout_kv_gb = 2.5 * per_token * 64 / 1e9                   # two and a half rows of 64 tokens
    student, teacher = plan.read_shape("student", cfg.student), plan.read_shape("teacher", cfg.teacher)
    _, sizes = plan.estimate(cfg, student, teacher)
    assert sizes["rows"] == 2 and sizes["kv_token"] == per_token == 256
    assert sizes["kv_gb"] * 1e9 == pytest.approx(2 * 64 * 256, abs=1e-3)   # within the budget


def test_the_fast_path_holds_a_bf16_copy_and_its_cache_and_samples_in_calls_of_one_size(cfg):
    per_token = 2 * LAYERS * KV_HEADS * HEAD_DIM * 2                 # the copy's dtype: 2 bytes per value
    cfg.rollout_kv_gb = 10.5 * per_token * 64 / 1e9                  # ten and a half rows of 64 tokens
    student, teacher = plan.read_shape("student", cfg.student), plan.read_shape("teacher", cfg.teacher)
    plain = phases(cfg)
    cfg.rollouts = "static"
    _, sizes = plan.estimate(cfg, student, teacher)
    assert sizes["kv_token"] == per_token and sizes["calls"] == 4 and sizes["rows"] == 8   # 32 rows: 4 x 8, not 10+10+10+2
    fast, cache = phases(cfg), 8 * 64 * per_token                    # one cache of 8 rows x 64 tokens, kept all step
    assert fast["weights + optimizer state"] * 1e9 == pytest.approx(plain["weights + optimizer state"] * 1e9
                                                                    + 2 * student.params + cache, abs=1)
    for phase in ("teacher scoring", "update"):                      # the copy and its cache are there all step
        assert fast[phase] * 1e9 == pytest.approx(plain[phase] * 1e9 + 2 * student.params + cache, abs=1)


def test_the_static_prefill_terms_are_the_sizes_of_the_tensors_transformers_creates(cfg, monkeypatch):
    """A real prefill through sample.RolloutCopy at a small shape (fp32 on CPU, so a = 4): the cache's tensors,
    the mask the attention receives and the K and V that reach SDPA are exactly plan.static_prefill's bytes."""
    import random

    import torch
    import sample
    import toy
    rng = random.Random(0)
    texts = [toy.make_problem(rng)["problem"] for _ in range(40)]
    tok = toy.train_tokenizer(texts)
    student = plan.read_shape("student", save_config(cfg.student, vocab_size=len(tok)))
    model = AutoModelForCausalLM.from_config(student.config).eval()
    rows, width = 3, 40
    fast = sample.RolloutCopy(model, torch.float32, rows=rows, max_len=width)
    seen, real = [], torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kw):
        if attn_mask.shape[-2] > 1:                                  # the prefill, not a decoded token
            seen.append((k.nbytes + v.nbytes, attn_mask.numel(), attn_mask.dtype, attn_mask.shape[-2]))
        return real(q, k, v, attn_mask=attn_mask, **kw)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    prompts = [texts[0], texts[1] + " 1 2 3", texts[2]]              # padded: a mask is needed
    sample.generate(None, tok, prompts, 1, stop=[tok.eos_token_id], temperature=0.0, top_p=1.0, top_k=0,
                    max_new_tokens=4, static=fast)
    prompt = seen[0][3]
    terms = plan.static_prefill(student, rows, prompt, width, 4)
    assert len(seen) == LAYERS and seen[0][2] == torch.bool
    assert seen[0][0] == terms["kv_expanded"] > 0                    # K and V repeated to 4 query heads, whole width
    assert seen[0][1] == terms["mask"] == rows * prompt * width      # the mask spans the cache, not the prompt
    assert sum(layer.keys.nbytes + layer.values.nbytes for layer in fast.cache.layers) == terms["cache"]


def test_weights_and_optimizer_state_divide_by_the_gpus(cfg):
    one = phases(cfg)["weights + optimizer state"]
    cfg.gpus = 4
    assert phases(cfg)["weights + optimizer state"] == pytest.approx(one / 4)
    student, teacher = plan.read_shape("student", cfg.student), plan.read_shape("teacher", cfg.teacher)
    assert one * 1e9 == pytest.approx(16 * student.params + 2 * teacher.params)


def test_a_replicated_teacher_costs_more_than_a_sharded_one(cfg):
    cfg.gpus = 4
    sharded = phases(cfg)
    replicated = phases(replace_ns(cfg, shard_teacher=False))
    for phase in ("weights + optimizer state", "teacher scoring", "generation", "update"):
        assert replicated[phase] > sharded[phase], phase


def test_checkpointing_costs_less_than_keeping_every_activation(cfg):
    assert phases(cfg)["update"] < phases(replace_ns(cfg, gradient_checkpointing=False))["update"]


def replace_ns(ns, **changes):
    return SimpleNamespace(**{**vars(ns), **changes})


@pytest.mark.parametrize("changes, phase, field", [
    (dict(rollout_kv_gb=100.0, max_new_tokens=4000, batch_size=64), "generation", "rollout_kv_gb"),
    (dict(logprob_chunk_tokens=4096, micro_batch_tokens=4096), "log-prob chunk", "logprob_chunk_tokens"),
])
def test_a_phase_that_does_not_fit_names_its_field(cfg, tmp_path, capsys, changes, phase, field):
    cfg = replace_ns(cfg, **changes)
    if field == "logprob_chunk_tokens":                              # a large vocabulary: the head dominates
        cfg.student = save_config(tmp_path / "wide", vocab_size=50_000)
    gb = phases(cfg)
    largest, second = sorted(gb.values())[-1], sorted(gb.values())[-2]
    assert gb[phase] == largest
    cfg.gpu_memory_gb = (largest + second) / 2                       # only the largest phase is over
    assert not plan.print_plan(cfg)
    over = [line for line in capsys.readouterr().out.splitlines() if line.startswith("DOES NOT FIT")]
    assert len(over) == 1 and phase in over[0] and over[0].endswith(field)


def test_an_unreadable_config_names_the_model_and_what_was_expected(cfg, tmp_path):
    cfg.teacher = str(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        plan.print_plan(cfg)
    assert "teacher" in str(e.value) and "empty" in str(e.value) and "config.json" in str(e.value)


def test_the_shipped_configs_fit_their_gpus_with_ten_percent_free(monkeypatch, tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import plans
    for name, config in plans.MODELS.items():
        config.save_pretrained(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    for path, (gpus, memory) in plans.SHIPPED.items():
        cfg = plans.shipped_plan_config(path, gpus, memory)
        assert max(phases(cfg).values()) <= 0.9 * memory, path
    paper = yaml.safe_load((ROOT / "configs/r1-distill-1.5b_skywork-7b.yaml").read_text())
    assert (paper["batch_size"], paper["group_size"], paper["max_new_tokens"]) == (256, 8, 12288)


def test_teacher_ranks_plan_the_student_without_a_teacher_and_the_teacher_alone_on_its_own_gpus(cfg, capsys):
    """With K teacher ranks of gpus, the student's phases are those of gpus - K GPUs holding no teacher, and each
    teacher GPU holds its share of the bf16 teacher (2 B/param over K, or all of it when not sharded)."""
    cfg.gpus, cfg.teacher_ranks = 3, 2
    apart = phases(cfg)
    alone = SimpleNamespace(**{**vars(cfg), "gpus": 1, "teacher_ranks": 0})
    without = {name: gb for name, gb, _, _ in plan.estimate(alone, plan.read_shape("student", cfg.student), None)[0]}
    assert "teacher scoring" not in apart and {k: apart[k] for k in without} == without
    params = plan.read_shape("teacher", cfg.teacher).params
    assert apart["teacher ranks: weights"] == pytest.approx(2 * params / 2 / 1e9)
    assert apart["teacher ranks: scoring"] > apart["teacher ranks: weights"]
    cfg.shard_teacher = False
    assert phases(cfg)["teacher ranks: weights"] == pytest.approx(2 * params / 1e9)
    assert plan.print_plan(cfg)
    assert "the teacher on 2 GPUs of its own" in capsys.readouterr().out
    cfg.teacher_ranks = 3
    with pytest.raises(SystemExit, match="leaves no GPU to the student"):
        plan.print_plan(cfg)
