"""scope_loss, pinned on numbers small enough to check by hand (METHOD.md, Eqs. 1-6)."""
import math
from contextlib import nullcontext
from dataclasses import replace

import pytest
import torch

import scope
from conftest import ROOT
from eval import step_metrics
from sample import Rollouts
from scope import Config, accumulate_gradients, group_softmax, loss_norms, parse_config, scope_loss
from teacher import Given

CFG = Config()


def rollouts(nll_student, nll_teacher, correct, group, tokens=2):
    """Per-token tensors whose per-rollout mean NLLs are the given numbers (each token has that NLL)."""
    n = len(correct)
    logp = (-torch.tensor(nll_student, dtype=torch.float32)[:, None].repeat(1, tokens)).requires_grad_()
    teacher = -torch.tensor(nll_teacher, dtype=torch.float32)[:, None].repeat(1, tokens)
    mask = torch.ones(n, tokens, dtype=torch.bool)
    return logp, teacher, mask, torch.tensor(correct), torch.tensor(group)


def weights(cfg, *args, **kw):
    logp, teacher, mask, correct, group = rollouts(*args, **kw)
    _, info = scope_loss(logp, teacher, mask, correct, group, cfg, norm=float(mask.sum()))
    return info["weight"]


def test_student_weight_is_softmax_of_student_nll_over_the_correct_subset():
    # Two correct rollouts with mean NLL 1 and 2 (PPL e and e^2): w = softmax([1, 2]), times 2 (mean 1).
    w = weights(CFG, [1.0, 2.0], [5.0, 5.0], [True, True], [0, 0])
    expected = torch.softmax(torch.tensor([1.0, 2.0]), 0) * 2
    assert torch.allclose(w, expected)
    assert w[1] > w[0]  # the less certain correct answer weighs more (Eq. 4)


def test_teacher_weight_falls_as_teacher_perplexity_rises():
    w = weights(CFG, [1.0, 1.0, 1.0], [0.5, 1.0, 3.0], [False, False, False], [0, 0, 0])
    assert w[0] > w[1] > w[2]
    assert torch.allclose(w, torch.softmax(-torch.tensor([0.5, 1.0, 3.0]), 0) * 3)  # Eq. 5


def test_tau_sharpens_when_small_and_flattens_when_large():
    args = ([1.0, 2.0], [0.0, 0.0], [True, True], [0, 0])
    sharp = weights(replace(CFG, tau=0.25), *args)
    base = weights(CFG, *args)
    flat = weights(replace(CFG, tau=100.0), *args)
    assert sharp[1] - sharp[0] > base[1] - base[0] > flat[1] - flat[0] > 0
    assert torch.allclose(flat, torch.ones(2), atol=0.01)
    assert torch.allclose(sharp, torch.softmax(torch.tensor([4.0, 8.0]), 0) * 2)


def test_one_prompts_rollouts_never_change_another_prompts_weights():
    a = weights(CFG, [1.0, 2.0, 0.3, 0.9], [1.0, 2.0, 0.2, 4.0], [True, False, True, False], [0, 0, 1, 1])
    b = weights(CFG, [1.0, 2.0, 7.0, 0.1], [1.0, 2.0, 9.0, 0.1], [True, False, True, False], [0, 0, 1, 1])
    assert torch.equal(a[:2], b[:2])


def test_group_softmax_normalises_within_each_prompt_and_subset():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    group = torch.tensor([0, 0, 0, 1, 1])
    member = torch.tensor([True, True, False, True, True])
    w = group_softmax(scores, group, member, mean_one=False)
    assert w[2] == 0
    assert torch.allclose(w[:2].sum(), torch.tensor(1.0)) and torch.allclose(w[3:].sum(), torch.tensor(1.0))


def test_all_correct_group_has_only_the_mle_path():
    logp, teacher, mask, correct, group = rollouts([1.0, 2.0], [9.0, 9.0], [True, True], [0, 0])
    loss, info = scope_loss(logp, teacher, mask, correct, group, CFG, norm=4.0)
    assert info["loss_opd"] == 0
    # value of the MLE path: -(sum of weights x tokens) / norm = -(2 weights averaging 1 x 2 tokens) / 4
    assert math.isclose(info["loss_mle"].item(), -1.0, rel_tol=1e-6)


def test_all_wrong_group_has_only_the_opd_path_and_its_value_is_the_k1_kl():
    logp, teacher, mask, correct, group = rollouts([1.0, 1.0], [3.0, 3.0], [False, False], [0, 0])
    loss, info = scope_loss(logp, teacher, mask, correct, group, CFG, norm=4.0)
    assert info["loss_mle"] == 0
    # A = log pi_old - log pi_T = -1 - (-3) = 2 on every token; uniform weights (equal teacher PPL)
    assert math.isclose(info["loss_opd"].item(), 2.0, rel_tol=1e-6)
    assert math.isclose(loss.item(), 2.0, rel_tol=1e-6)


def test_a_subset_of_one_gets_weight_one_and_an_empty_subset_contributes_nothing():
    w = weights(CFG, [1.0, 5.0], [0.1, 4.0], [True, False], [0, 0])
    assert torch.equal(w, torch.ones(2))
    w_sum = weights(replace(CFG, weight_scale="sum"), [1.0, 5.0], [0.1, 4.0], [True, False], [0, 0])
    assert torch.equal(w_sum, torch.ones(2))


def test_sum_scale_makes_each_subset_sum_to_one():
    w = weights(replace(CFG, weight_scale="sum"), [1.0, 2.0, 3.0], [1.0, 1.0, 1.0], [True, True, False], [0, 0, 0])
    assert torch.allclose(w[:2].sum(), torch.tensor(1.0)) and w[2] == 1


@pytest.mark.parametrize("switch, value, path", [("student_weight", "uniform", "mle"),
                                                 ("teacher_weight", "uniform", "opd")])
def test_uniform_switch_gives_equal_weights_on_its_path(switch, value, path):
    cfg = replace(CFG, **{switch: value})
    correct = path == "mle"
    w = weights(cfg, [1.0, 3.0], [0.5, 2.5], [correct, correct], [0, 0])
    assert torch.equal(w, torch.ones(2))


def test_reversed_switches_flip_the_direction_of_each_weight():
    stu = weights(replace(CFG, student_weight="reversed"), [1.0, 2.0], [0.0, 0.0], [True, True], [0, 0])
    tea = weights(replace(CFG, teacher_weight="reversed"), [1.0, 1.0], [0.5, 3.0], [False, False], [0, 0])
    assert stu[0] > stu[1]  # released code: low-perplexity correct answers weigh more
    assert tea[1] > tea[0]  # reversed: the teacher-implausible failure weighs more
    assert torch.allclose(stu, torch.softmax(-torch.tensor([1.0, 2.0]), 0) * 2)


def test_plain_opd_sends_correct_rollouts_to_the_reverse_kl_path_too():
    cfg = replace(CFG, route_by_correctness=False, teacher_weight="uniform")
    logp, teacher, mask, correct, group = rollouts([1.0, 2.0], [3.0, 3.0], [True, False], [0, 0])
    _, info = scope_loss(logp, teacher, mask, correct, group, cfg, norm=4.0)
    assert info["loss_mle"] == 0
    # uniform weights: mean over 4 tokens of A = (2, 2, 1, 1)
    assert math.isclose(info["loss_opd"].item(), 1.5, rel_tol=1e-6)


def test_weights_carry_no_gradient_and_rho_is_one_in_value():
    logp, teacher, mask, correct, group = rollouts([1.0, 2.0], [1.0, 3.0], [True, False], [0, 0])
    loss, info = scope_loss(logp, teacher, mask, correct, group, CFG, norm=4.0)
    assert not info["weight"].requires_grad
    loss.backward()
    # d loss / d logp: correct row -w/norm per token (MLE); wrong row w*A/norm (A = -2 - (-3) = 1)
    assert torch.allclose(logp.grad, torch.tensor([[-0.25, -0.25], [0.25, 0.25]]))


def test_padding_tokens_never_enter_the_loss():
    logp, teacher, mask, correct, group = rollouts([1.0, 1.0], [3.0, 3.0], [False, False], [0, 0], tokens=3)
    mask[0, 2] = False
    logp_pad = logp.detach().clone()
    logp_pad[0, 2] = -50.0  # garbage under the mask
    logp_pad.requires_grad_()
    a, _ = scope_loss(logp, teacher, mask, correct, group, CFG, norm=5.0)
    b, _ = scope_loss(logp_pad, teacher, mask, correct, group, CFG, norm=5.0)
    assert torch.allclose(a, b)
    b.backward()
    assert logp_pad.grad[0, 2] == 0


def test_opd_step_raises_tokens_the_teacher_prefers_and_lowers_those_it_does_not():
    """One SGD step on the reverse-KL path, a two-token vocabulary, one position."""
    logits = torch.zeros(2, requires_grad=True)  # student: p = (0.5, 0.5)
    teacher = torch.log(torch.tensor([0.9, 0.1]))  # teacher prefers token 0
    for token in (0, 1):  # the two sampled rollouts, both wrong
        logp = logits.log_softmax(-1)[token].reshape(1, 1)
        loss, _ = scope_loss(logp, teacher[token].reshape(1, 1), torch.ones(1, 1, dtype=torch.bool),
                             torch.tensor([False]), torch.tensor([0]), CFG, norm=1.0)
        before = logits.log_softmax(-1)[token].item()
        logits.grad = None
        loss.backward()
        with torch.no_grad():
            after = (logits - 0.5 * logits.grad).log_softmax(-1)[token].item()
        if token == 0:
            assert after > before  # the teacher likes it more than the student: gains probability
        else:
            assert after < before  # the teacher likes it less: loses probability


def test_mle_step_raises_the_probability_of_a_correct_answer():
    logits = torch.zeros(3, requires_grad=True)
    logp = logits.log_softmax(-1)[2].reshape(1, 1)
    loss, _ = scope_loss(logp, torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), torch.tensor([True]),
                         torch.tensor([0]), CFG, norm=1.0)
    loss.backward()
    with torch.no_grad():
        assert (logits - 0.5 * logits.grad).log_softmax(-1)[2] > logits.log_softmax(-1)[2]


def test_a_verdict_that_is_not_boolean_is_refused():
    logp, teacher, mask, _, group = rollouts([1.0, 2.0], [1.0, 3.0], [True, False], [0, 0])
    with pytest.raises(TypeError, match="bool"):
        scope_loss(logp, teacher, mask, torch.tensor([1, 0]), group, CFG, norm=4.0)  # `~1` is -2: routed wrong


def test_released_convention_divides_the_mle_path_by_the_correct_rollouts_tokens_only():
    logp, teacher, mask, correct, group = rollouts([1.0, 2.0], [1.0, 3.0], [True, False], [0, 0])
    _, ours = scope_loss(logp, teacher, mask, correct, group, CFG, norm=4.0)
    _, released = scope_loss(logp, teacher, mask, correct, group, CFG, norm=4.0, norm_mle=2.0)
    assert math.isclose(ours["loss_mle"].item(), -0.5, rel_tol=1e-6)      # -(1 x 2 tokens) / 4
    assert math.isclose(released["loss_mle"].item(), -1.0, rel_tol=1e-6)  # -(1 x 2 tokens) / 2 correct tokens
    assert torch.equal(ours["loss_opd"], released["loss_opd"])           # A = 1 on 2 tokens, / 4 either way


def test_loss_norms_count_the_steps_tokens_as_each_convention_asks():
    resp = torch.tensor([[True, True, True], [True, False, False]])     # 3 and 1 response tokens
    ro = Rollouts(tokens=resp.long(), attn=resp, resp=resp, texts=[], truncated=torch.zeros(2, dtype=torch.bool))
    correct = torch.tensor([True, False])
    one, two = [(slice(0, 2), slice(0, 3))], [(slice(0, 1), slice(0, 3)), (slice(1, 2), slice(0, 1))]
    assert loss_norms(ro, correct, one, CFG, world=1) == [(4, None)]
    assert loss_norms(ro, correct, two, CFG, world=1) == [(4, None), (4, None)]  # one mean however it is cut
    assert loss_norms(ro, correct, two, replace(CFG, mle_tokens="correct"), world=1) == [(4, 3), (4, 3)]
    assert loss_norms(ro, ~correct, one, replace(CFG, mle_tokens="correct"), world=1) == [(4, 1)]
    assert loss_norms(ro, correct, two, replace(CFG, loss_agg="sum", batch_size=7), world=1) == [(7, None)] * 2
    # per micro-batch: its own tokens over its share of the step's rollouts (1/2 here, 1/4 on two ranks)
    micro = replace(CFG, loss_agg="micro_token_mean", mle_tokens="correct")
    assert loss_norms(ro, correct, two, micro, world=1) == [(6, 6), (2, 2)]  # (3, 3) / .5 and (1, max(0, 1)) / .5
    assert loss_norms(ro, correct, one, micro, world=1) == [(4, 3)]          # one micro-batch: token_mean's
    assert loss_norms(ro, correct, two, micro, world=2) == [(12, 12), (4, 4)]


def test_the_released_preset_sets_the_released_codes_five_conventions():
    cfg = parse_config(["--config", str(ROOT / "configs" / "released.yaml")])
    assert (cfg.student_weight, cfg.weight_scale, cfg.mle_tokens, cfg.loss_agg, cfg.teacher_temperature) == \
        ("reversed", "mean", "correct", "micro_token_mean", 1.0)
    assert (cfg.teacher_weight, cfg.tau, cfg.temperature) == ("ppl", 1.0, 0.6)


RELEASED = parse_config(["--config", str(ROOT / "configs" / "released.yaml")])
ALL = slice(0, 3)
# Four rollouts of four prompts (so every weight is 1 whatever the convention), cut into three micro-batches of
# unequal make-up: row 0 correct (2 tokens); rows 1-2 wrong (1 token, A = 2) and correct (1 token); row 3 wrong
# (3 tokens, A = 1). Shares of the step's 4 rollouts: 1/4, 1/2, 1/4.
STEP = dict(nll_student=[1.0, 1.0, 1.0, 1.0], nll_teacher=[1.0, 3.0, 1.0, 2.0], correct=[True, False, True, False],
            lengths=[2, 1, 1, 3])
THREE = [(slice(0, 1), ALL), (slice(1, 3), ALL), (slice(3, 4), ALL)]


def step_gradient(cfg, batches, monkeypatch, nll_student, nll_teacher, correct, lengths):
    """d(one step's loss) / d(each token's log-prob), through `loss_norms` and `accumulate_gradients` on one rank.
    The "student" is the table of log-probs itself and a row's tokens are its row number, so the forward pass is
    a lookup and the gradient lands on the table (N, T)."""
    n = len(correct)
    logp, teacher, _, correct, group = rollouts(nll_student, nll_teacher, correct, list(range(n)), tokens=3)
    mask = torch.arange(3) < torch.tensor(lengths)[:, None]                                   # (N, T)
    rows = torch.arange(n)[:, None].expand(-1, 3)                                             # (N, T) row numbers
    ro = Rollouts(tokens=rows, attn=mask, resp=mask, texts=[], truncated=torch.zeros(n, dtype=torch.bool))
    monkeypatch.setattr(scope, "token_logprobs", lambda table, tokens, *a, **kw: table[tokens[:, 0]])
    accumulate_gradients(logp, ro, batches, Given(teacher), None, correct, group, 0, cfg, nullcontext(), world=1)
    return logp.grad


def test_micro_token_mean_weighs_each_micro_batchs_own_means_by_its_share_of_the_rollouts(monkeypatch):
    grad = step_gradient(RELEASED, THREE, monkeypatch, **STEP)
    # correct tokens: -share / the micro-batch's correct tokens; wrong tokens: share x A / all its tokens
    expected = torch.tensor([[-1 / 4 / 2, -1 / 4 / 2, 0],       # micro-batch 1: 2 correct tokens, 2 in all
                             [1 / 2 * 2 / 2, 0, 0],             # micro-batch 2: 1 correct token, 2 in all
                             [-1 / 2 / 1, 0, 0],
                             [1 / 4 * 1 / 3] * 3])              # micro-batch 3: no correct token, 3 in all
    assert torch.allclose(grad, expected)
    # the step-wide mean divides by the step's 3 correct and 7 response tokens wherever a token lies
    step_mean = step_gradient(replace(RELEASED, loss_agg="token_mean"), THREE, monkeypatch, **STEP)
    assert torch.allclose(step_mean, torch.tensor([[-1 / 3, -1 / 3, 0], [2 / 7, 0, 0], [-1 / 3, 0, 0], [1 / 7] * 3]))
    assert (grad[:, 0] - step_mean[:, 0]).abs().min() > 0.05  # every rollout's tokens move otherwise


def test_micro_token_mean_of_a_step_in_one_micro_batch_is_the_step_wide_mean(monkeypatch):
    whole = [(slice(0, 4), ALL)]
    grad = step_gradient(RELEASED, whole, monkeypatch, **STEP)
    before = step_gradient(replace(RELEASED, loss_agg="token_mean"), whole, monkeypatch, **STEP)
    assert torch.equal(grad, before)
    assert torch.allclose(grad, torch.tensor([[-1 / 3, -1 / 3, 0], [2 / 7, 0, 0], [-1 / 3, 0, 0], [1 / 7] * 3]))


def roll_of(weight, mle, group, **labels):
    n = len(weight)
    return {"weight": torch.tensor(weight), "mle": torch.tensor(mle), "group": torch.tensor(group),
            "correct": torch.tensor(mle), "truncated": torch.zeros(n, dtype=torch.bool),
            "n_tokens": torch.ones(n), "kl_sum": torch.zeros(n), "nll_student": torch.zeros(n),
            "nll_teacher": torch.zeros(n), "loss_mle": torch.zeros(1), "loss_opd": torch.zeros(1),
            "scored": ~torch.tensor(mle), **{k: torch.tensor(v) for k, v in labels.items()}}


def test_effective_sample_size_is_one_when_uniform_and_one_over_n_when_one_rollout_takes_all():
    m = step_metrics(roll_of([1.0, 1.0, 2.0, 0.0], [True, True, False, False], [0, 0, 0, 0]), group_size=4)
    assert m["ess_mle"] == pytest.approx(1.0) and m["ess_opd"] == pytest.approx(0.5)
    m = step_metrics(roll_of([1.5, 0.5, 1.0, 1.0], [False, False, False, False], [0, 0, 1, 1]), group_size=2)
    assert m["ess_opd"] == pytest.approx((1 / (0.75 ** 2 + 0.25 ** 2) / 2 + 1) / 2)  # mean over the 2 prompts


def test_within_a_prompt_the_labelled_rollouts_share_of_weight_is_reported_beside_their_share_of_count():
    T, F = True, False
    roll = roll_of(weight=[0.4, 1.2, 1.6, 0.8,    1.0, 1.0, 1.0, 1.0,    0.5, 1.5, 1.5, 0.5],
                   mle=[F, F, F, F,               F, F, F, F,            T, T, F, F],
                   group=[0, 0, 0, 0,             1, 1, 1, 1,            2, 2, 2, 2],
                   teacher_unreliable=[T, F, F, T,  T, T, T, T,          F, F, F, T],
                   unlikely_route=[F, F, F, F,      F, F, F, F,          T, F, F, F])
    m = step_metrics(roll, group_size=4)
    # reverse KL: prompt 0 puts (0.4 + 0.8) / 4.0 = 0.3 of its weight on half its rollouts, prompt 2 puts
    # 0.5 / 2.0 = 0.25 on half; prompt 1 (every wrong rollout unreliable) has nothing to compare and is left out
    assert m["opd_unreliable_prompts"] == 2
    assert m["opd_unreliable_weight"] == pytest.approx((0.3 + 0.25) / 2) and m["opd_unreliable_count"] == 0.5
    # MLE: only prompt 2 has correct rollouts on both routes; the unlikely one takes 0.5 / 2.0 of the weight
    assert m["mle_unlikely_prompts"] == 1
    assert m["mle_unlikely_weight"] == pytest.approx(0.25) and m["mle_unlikely_count"] == 0.5


def test_without_a_prompt_holding_both_kinds_the_within_prompt_shares_are_empty_and_without_labels_absent():
    roll = roll_of([1.0, 1.0], [False, False], [0, 0], teacher_unreliable=[True, True], unlikely_route=[False, False])
    m = step_metrics(roll, group_size=2)
    assert (m["opd_unreliable_weight"], m["opd_unreliable_count"], m["opd_unreliable_prompts"]) == (None, None, 0)
    assert m["mle_unlikely_prompts"] == 0                 # no correct rollout at all
    assert not any("unreliable" in k or "unlikely" in k
                   for k in step_metrics(roll_of([1.0, 1.0], [False, False], [0, 0]), group_size=2))
