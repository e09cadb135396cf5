"""sample.py: response masks, batched generation, and log-probs over the shared vocabulary."""
import torch
from transformers import AutoTokenizer

import toy
from sample import build_prompt, generate, naive_token_logprobs, response_mask, token_logprobs

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
