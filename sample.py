"""
Rollouts and log-probs: the two things SCOPE asks of a model.

- `build_prompt` turns a math problem into the text the model sees.
- `generate` samples G responses for each of B prompts in one batched HF `generate` call and
  returns them with a response mask that ends at the first end-of-sequence token.
- `token_logprobs` scores given tokens under any model (student with gradients, teacher without),
  over the shared tokenizer's ids only, in chunks of tokens so that the (tokens x vocab) logits
  never exist in full.

Everything here works on plain tensors and HF models; nothing knows about the loss.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import GenerationConfig


def build_prompt(tokenizer, problem: str, suffix: str, chat_template: bool) -> str:
    """The problem plus the instruction, wrapped in the chat template when the tokenizer has one."""
    text = f"{problem}\n{suffix}" if suffix else problem
    if chat_template and tokenizer.chat_template:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text


def eos_ids(model, tokenizer) -> list[int]:
    """Every id that ends a response: the model's declared EOS ids and the tokenizer's."""
    declared = model.generation_config.eos_token_id
    ids = declared if isinstance(declared, list) else [declared]
    ids = [i for i in ids if i is not None] + [tokenizer.eos_token_id]
    return sorted({i for i in ids if i is not None})


def response_mask(response: torch.Tensor, eos: list[int]) -> torch.Tensor:
    """(N, R) sampled ids -> (N, R) bool: tokens up to and including the first EOS, nothing after.

    Built from EOS positions, never from `token != pad`: Qwen base models use one id for both,
    so a pad test would drop the EOS the model must learn to emit.
    """
    is_eos = torch.isin(response, torch.tensor(eos, device=response.device))
    eos_before = is_eos.long().cumsum(-1) - is_eos.long()  # how many EOS strictly before each token
    return eos_before == 0


def kv_bytes_per_token(config, bytes_per_value: int = 2) -> int:
    """KV cache one token holds in every layer: 2 (K and V) x layers x KV heads x head dim x bytes."""
    c = config.get_text_config()
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return 2 * c.num_hidden_layers * kv_heads * head_dim * bytes_per_value


def rows_per_call(kv_budget_gb: float, kv_per_token: int, tokens_per_row: int) -> int:
    """Rows one `generate` call may hold so that their KV cache stays within the budget (at least 1)."""
    return max(1, int(kv_budget_gb * 1e9 // (kv_per_token * tokens_per_row)))


@dataclass
class Rollouts:
    """B prompts x G samples, flattened so that rows g*G .. g*G+G-1 are prompt g's group."""
    tokens: torch.Tensor     # (N, L) prompt (left-padded) followed by response
    attn: torch.Tensor       # (N, L) bool: real prompt tokens and response tokens up to the first EOS
    resp: torch.Tensor       # (N, L) bool: response tokens only (the ones that are scored)
    texts: list[str]         # N decoded responses
    truncated: torch.Tensor  # (N,) bool: no EOS within max_new_tokens


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], group_size: int, *, temperature: float,
             top_p: float, top_k: int, max_new_tokens: int, synced: bool = False) -> Rollouts:
    """Sample `group_size` responses per prompt with one batched `generate` call.

    Call it with the model in eval mode: HF applies gradient checkpointing only in train mode,
    so generation then runs with the KV cache and without recomputation. `synced` keeps every
    rank stepping until all ranks are done (needed under FSDP, where each forward is a collective).
    """
    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(device)
    prompt_ids = enc.input_ids.repeat_interleave(group_size, 0)      # (N, P)
    prompt_attn = enc.attention_mask.repeat_interleave(group_size, 0)
    eos = eos_ids(model, tokenizer)
    vocab = len(tokenizer)
    # Every sampling field is set here, so a checkpoint's own generation_config (repetition
    # penalty, top_k, ...) cannot leak into the rollouts; rows past the tokenizer are never sampled.
    config = GenerationConfig(
        do_sample=temperature > 0, temperature=temperature if temperature > 0 else 1.0,
        top_p=top_p, top_k=top_k, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
        repetition_penalty=1.0, no_repeat_ngram_size=0, num_beams=1, max_new_tokens=max_new_tokens,
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0],
        suppress_tokens=list(range(vocab, model.config.get_text_config().vocab_size)) or None,
        use_cache=True,
    )
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_attn, generation_config=config,
                         synced_gpus=synced)

    response = out[:, prompt_ids.shape[1]:]                          # (N, R)
    mask = response_mask(response, eos)
    truncated = ~torch.isin(response, torch.tensor(eos, device=device)).any(-1)
    texts = tokenizer.batch_decode([r[m] for r, m in zip(response, mask)], skip_special_tokens=True)
    return Rollouts(
        tokens=out,
        attn=torch.cat([prompt_attn.bool(), mask], 1),
        resp=torch.cat([torch.zeros_like(prompt_attn, dtype=torch.bool), mask], 1),
        texts=texts,
        truncated=truncated,
    )


def _chunk_logprobs(hidden, weight, targets, temperature, vocab):
    """(n, H) hidden states, (V, H) head, (n,) targets -> (n,) fp32 log-probs over the first `vocab` ids."""
    with torch.autocast(hidden.device.type, enabled=False):  # fp32 logits, even under bf16 autocast
        logits = hidden.float() @ weight.T / temperature        # (n, V): the full head keeps the GEMM aligned
    return logits[:, :vocab].log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)


def token_logprobs(model, tokens: torch.Tensor, attn: torch.Tensor, resp: torch.Tensor, *,
                   vocab: int, temperature: float, chunk_tokens: int = 1024) -> torch.Tensor:
    """Log-prob of every response token under `model`, as (N, L) fp32 (0 where `resp` is False).

    tokens, attn, resp: (N, L) as in `Rollouts`. The logits are divided by `temperature` (the one
    the rollouts were sampled at) and restricted to the first `vocab` rows of the LM head: the
    shared tokenizer's ids, so heads of 151,936 and 152,064 rows give comparable distributions.
    Only response positions are projected onto the vocabulary, `chunk_tokens` at a time, each chunk
    recomputed in backward: peak memory is one (chunk_tokens x vocab) block, not (N x L x vocab).
    Runs with or without grad; call it under `torch.no_grad()` for the teacher.
    """
    # Positions count real tokens only, exactly as `generate` numbered them under left padding.
    position_ids = (attn.long().cumsum(-1) - 1).clamp(min=0)
    # logits_to_keep=1: the full (N, L, V) logits are never formed; the last hidden state comes back.
    out = model(input_ids=tokens, attention_mask=attn.long(), position_ids=position_ids,
                logits_to_keep=1, output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states[-1]                                   # (N, L, H), after the final norm
    scored = resp[:, 1:]                                             # token t is predicted at t-1
    h = hidden[:, :-1][scored]                                       # (n, H) packed response positions
    targets = tokens[:, 1:][scored]                                  # (n,)
    weight = model.get_output_embeddings().weight.float()            # (V, H), cast once, not per chunk
    pieces = []
    for i in range(0, h.shape[0], chunk_tokens):
        args = (h[i:i + chunk_tokens], weight, targets[i:i + chunk_tokens], temperature, vocab)
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(*args))
    logp = torch.zeros(scored.shape, dtype=torch.float32, device=tokens.device)
    if pieces:
        logp = logp.masked_scatter(scored, torch.cat(pieces))
    return F.pad(logp, (1, 0))                                       # (N, L)


def naive_token_logprobs(model, tokens, attn, resp, *, vocab: int, temperature: float) -> torch.Tensor:
    """Reference for `token_logprobs`: the full (N, L, V) logits at once. Tests and benches only."""
    position_ids = (attn.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=tokens, attention_mask=attn.long(), position_ids=position_ids,
                   use_cache=False).logits[..., :vocab].float() / temperature
    lp = logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return F.pad(lp * resp[:, 1:], (1, 0))
