"""sample.py: response masks, batched generation, and log-probs over the shared vocabulary."""
import random

import pytest
import torch
from tokenizers import processors
from transformers import AutoTokenizer

import toy
from conftest import next_token_model
from sample import (build_prompt, generate, kv_bytes_per_token, naive_token_logprobs, response_mask, rows_per_call,
                    stop_ids, token_logprobs, turn_end_id)

EOS, PAD = 0, 0  # one id for both, as in Qwen base models


def test_mask_keeps_the_first_eos_and_nothing_after_even_when_pad_is_eos():
    response = torch.tensor([[5, 6, EOS, PAD, PAD],    # stops early, padded with the same id
                             [5, EOS, 7, 8, 9],        # tokens after the first EOS are not scored
                             [5, 6, 7, 8, 9]])         # truncated: no EOS at all
    mask = response_mask(response, [EOS])
    assert mask.tolist() == [[True, True, True, False, False],
                             [True, True, False, False, False],
                             [True, True, True, True, True]]


def test_mask_honours_every_eos_id():
    mask = response_mask(torch.tensor([[5, 151645, 6, 151643]]), [151643, 151645])
    assert mask.tolist() == [[True, True, False, False]]


def tiny(tokenizer, rows=None, seed=0, tied=True):
    model = toy.tiny_qwen2(rows or len(tokenizer), tied=tied, seed=seed).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def test_tokenizer_ids_round_trip_through_save_and_autotokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    toy.tiny_qwen2(len(tokenizer), tied=True, seed=0).save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "486+357\nPut your final answer within \\boxed{}. 6+7=13 \\boxed{843}"
    assert reloaded(text).input_ids == tokenizer(text).input_ids
    assert reloaded.pad_token_id == reloaded.eos_token_id == tokenizer.eos_token_id


def test_left_padded_batch_gives_the_same_greedy_output_as_each_prompt_alone(tokenizer):
    model = tiny(tokenizer)
    prompts = ["1+2", "486+357\nPut your final answer within \\boxed{}.", "77+8"]
    kw = dict(stop=[tokenizer.eos_token_id], temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=10)
    batch = generate(model, tokenizer, prompts, 1, **kw)
    for i, p in enumerate(prompts):
        alone = generate(model, tokenizer, [p], 1, **kw)
        n = alone.resp[0].sum()
        assert torch.equal(batch.tokens[i][batch.resp[i]][:n], alone.tokens[0][alone.resp[0]])
        assert batch.texts[i] == alone.texts[0]


def test_group_rows_are_contiguous_and_responses_follow_the_prompt(tokenizer):
    model = tiny(tokenizer)
    ro = generate(model, tokenizer, ["1+2", "33+44"], 3, stop=[tokenizer.eos_token_id], temperature=1.0,
                  top_p=1.0, top_k=0, max_new_tokens=8)
    assert ro.tokens.shape[0] == 6 and len(ro.texts) == 6
    prompt_len = ro.resp.any(0).nonzero().min().item()     # responses start where the prompts end
    assert not ro.resp[:, :prompt_len].any() and ro.resp[:, prompt_len].all()
    assert torch.equal(ro.attn & ro.resp, ro.resp)
    for g, prompt in enumerate(["1+2", "33+44"]):
        ids = tokenizer(prompt).input_ids
        for row in range(3 * g, 3 * g + 3):
            assert ro.tokens[row, prompt_len - len(ids):prompt_len].tolist() == ids


def test_checkpoint_generation_defaults_do_not_leak_into_rollouts(tokenizer):
    model = tiny(tokenizer)
    kw = dict(stop=[tokenizer.eos_token_id], temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=10)
    clean = generate(model, tokenizer, ["12+34"], 1, **kw)
    model.generation_config.repetition_penalty = 50.0
    model.generation_config.no_repeat_ngram_size = 1
    model.generation_config.max_new_tokens = 2
    leaky = generate(model, tokenizer, ["12+34"], 1, **kw)
    assert torch.equal(clean.tokens, leaky.tokens)


def test_padding_rows_of_the_head_are_never_sampled(tokenizer):
    model = tiny(tokenizer, rows=len(tokenizer) + 32)
    with torch.no_grad():
        model.lm_head.weight[len(tokenizer):] = 0
        model.lm_head.weight[len(tokenizer):, 0] = 100.0  # huge logits for the padding rows
        model.model.norm.weight.fill_(1.0)
    ro = generate(model, tokenizer, ["1+2", "3+4"], 4, stop=[tokenizer.eos_token_id], temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=6)
    assert ro.tokens.max() < len(tokenizer)


def test_truncated_responses_are_flagged(tokenizer):
    model = tiny(tokenizer)
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] = -100 * model.lm_head.weight[tokenizer.eos_token_id].sign()
    ro = generate(model, tokenizer, ["1+2"], 2, stop=[tokenizer.eos_token_id], temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=5)
    assert ro.truncated.all() and ro.resp.sum(1).tolist() == [5, 5]


def scored_batch(tokenizer, model):
    ro = generate(model, tokenizer, ["1+2", "486+357\nPut your final answer within \\boxed{}."], 2,
                  stop=[tokenizer.eos_token_id], temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=12)
    return ro.tokens, ro.attn, ro.resp


def test_chunked_logprobs_equal_the_full_logits_ones_in_value_and_gradient(tokenizer):
    model = tiny(tokenizer, rows=len(tokenizer) + 16, tied=False)
    tokens, attn, resp = scored_batch(tokenizer, model)
    kw = dict(vocab=len(tokenizer), temperature=0.6)
    chunked = token_logprobs(model, tokens, attn, resp, chunk_tokens=5, **kw)
    naive = naive_token_logprobs(model, tokens, attn, resp, **kw)
    assert torch.allclose(chunked, naive, atol=1e-5)
    assert (chunked[~resp] == 0).all() and (chunked[resp] < 0).all()
    weight = torch.randn_like(chunked)
    grads = []
    for lp in (chunked, naive):
        model.zero_grad()
        (lp * weight).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    chunked = token_logprobs(model, tokens, attn, resp, chunk_tokens=5, **kw)  # fresh graph for the check below
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_logprobs_are_normalised_over_the_tokenizer_ids_only(tokenizer):
    """Padding rows of a bigger head do not take probability mass: same numbers as a trimmed head."""
    big = tiny(tokenizer, rows=len(tokenizer) + 64, tied=False, seed=3)
    small = tiny(tokenizer, rows=len(tokenizer), tied=False, seed=3)
    state = {k: v[:len(tokenizer)] if v.shape[0] == len(tokenizer) + 64 else v for k, v in big.state_dict().items()}
    small.load_state_dict(state)
    tokens, attn, resp = scored_batch(tokenizer, big)
    with torch.no_grad():
        a = token_logprobs(big, tokens, attn, resp, vocab=len(tokenizer), temperature=1.0)
        b = token_logprobs(small, tokens, attn, resp, vocab=len(tokenizer), temperature=1.0)
    assert torch.allclose(a, b, atol=1e-6)


def test_prompt_uses_the_chat_template_only_when_asked_and_present(tokenizer):
    assert build_prompt(tokenizer, "1+2", "Box it.", True) == "1+2\nBox it."
    tokenizer.chat_template = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}<a>"
    try:
        assert build_prompt(tokenizer, "1+2", "Box it.", True) == "<u>1+2\nBox it.</u><a>"
        assert build_prompt(tokenizer, "1+2", "Box it.", False) == "1+2\nBox it."
    finally:
        tokenizer.chat_template = None


def test_greedy_outputs_are_the_same_in_one_call_and_in_chunks_of_rows(tokenizer):
    model = tiny(tokenizer)
    prompts = ["1+2", "486+357\nPut your final answer within \\boxed{}.", "77+8", "5+5"]
    kw = dict(stop=[tokenizer.eos_token_id], temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=10)
    whole = generate(model, tokenizer, prompts, 2, **kw)
    for max_rows in (1, 3, 5):
        chunked = generate(model, tokenizer, prompts, 2, max_rows=max_rows, **kw)
        assert chunked.texts == whole.texts
        assert torch.equal(chunked.resp.sum(1), whole.resp.sum(1)) and torch.equal(chunked.truncated, whole.truncated)
        for a, b in zip(chunked.tokens[chunked.resp].split(chunked.resp.sum(1).tolist()),
                        whole.tokens[whole.resp].split(whole.resp.sum(1).tolist())):
            assert torch.equal(a, b)


def test_rows_per_call_fits_the_kv_budget():
    per_token = kv_bytes_per_token(toy.tiny_qwen2(300, tied=True, seed=0).config, 4)
    assert per_token == 2 * 3 * 2 * 32 * 4                 # K and V, 3 layers, 2 KV heads, head dim 128 / 4
    assert rows_per_call(10 * per_token * 100 / 1e9, per_token, 100) == 10
    assert rows_per_call(1e-12, per_token, 100) == 1       # never less than one row


def test_teacher_scoring_keeps_no_layer_outputs_but_the_last(tokenizer):
    model = tiny(tokenizer, rows=len(tokenizer) + 16, tied=False)
    tokens, attn, resp = scored_batch(tokenizer, model)
    seen = []
    real = model.forward

    def spying(*args, **kwargs):
        seen.append(kwargs.get("output_hidden_states"))
        return real(*args, **kwargs)

    model.forward = spying
    with torch.no_grad():
        scored = token_logprobs(model, tokens, attn, resp, vocab=len(tokenizer), temperature=0.6)
    model.forward = real
    assert seen and not any(seen)                          # per-layer hidden states never asked for
    with torch.no_grad():
        assert torch.allclose(scored, naive_token_logprobs(model, tokens, attn, resp, vocab=len(tokenizer),
                                                           temperature=0.6), atol=1e-5)


QWEN_CHAT = ("{{ bos_token or '' }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
             "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture
def chat_tokenizer():
    """Built like Qwen2.5 base's: end-of-sequence <|endoftext|>, turns closed by <|im_end|>, no BOS."""
    rng = random.Random(0)
    rows = [toy.make_problem(rng) for _ in range(50)]
    tok = toy.train_tokenizer([f"{r['problem']}\n{toy.SUFFIX}" for r in rows] + [r["solution"] for r in rows])
    tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    tok.chat_template = QWEN_CHAT
    return tok


def turn_taker(tok):
    """A tiny model whose next token depends on the current one alone: any token -> "7" -> <|im_end|> -> "9";
    its only declared EOS is <|endoftext|>, as in Qwen2.5 base."""
    seven, nine, end = tok.convert_tokens_to_ids(["7", "9", "<|im_end|>"])
    return next_token_model(tok, {seven: 1, end: 2}, {(seven, 0): 2.0, (end, 1): 2.0, (nine, 2): 2.0})


def test_the_token_that_closes_a_chat_turn_ends_a_rollout(chat_tokenizer):
    tok, end = chat_tokenizer, chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = turn_taker(tok)
    assert turn_end_id(tok) == end
    assert stop_ids(model, tok, chat_template=True) == sorted([tok.eos_token_id, end])
    assert stop_ids(model, tok, chat_template=False) == [tok.eos_token_id]
    kw = dict(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=8)
    prompt = build_prompt(tok, "3+4", "Box it.", chat_template=True)
    ro = generate(model, tok, [prompt], 2, stop=stop_ids(model, tok, True), **kw)
    assert ro.texts == ["7", "7"]                          # nothing after <|im_end|> reaches the grader
    response = ro.tokens[ro.resp].reshape(2, -1)
    assert response[:, -1].tolist() == [end, end] and ro.resp.sum(1).tolist() == [2, 2]
    assert not ro.truncated.any()
    runaway = generate(model, tok, [prompt], 1, stop=[tok.eos_token_id], **kw)   # the declared EOS alone
    assert runaway.truncated.all() and "9" in runaway.texts[0]


def test_a_template_that_writes_bos_gets_exactly_one(chat_tokenizer):
    tok = chat_tokenizer
    tok.add_tokens(["<s>"], special_tokens=True)
    tok.bos_token = "<s>"
    bos = tok.convert_tokens_to_ids("<s>")
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    assert tok("1+2").input_ids[:1] == [bos]                # this tokenizer adds BOS by default
    model = turn_taker(tok)
    for chat in (True, False):                              # the template writes BOS; raw text gets it written out
        prompt = build_prompt(tok, "3+4", "Box it.", chat_template=chat)
        ro = generate(model, tok, [prompt], 1, stop=stop_ids(model, tok, chat), temperature=0.0, top_p=1.0,
                      top_k=0, max_new_tokens=2)
        assert (ro.tokens[0] == bos).sum() == 1 and ro.tokens[0, 0] == bos
