"""docs/walkthrough.md is what docs/walkthrough.py computes today from the recorded steps, and what it shows holds."""
import sys

import pytest
import torch

from conftest import ROOT
from scope import scope_loss

sys.path.insert(0, str(ROOT / "docs"))
import walkthrough  # noqa: E402

RECORDED = walkthrough.load_all()


@pytest.fixture(scope="module", params=list(RECORDED))
def world(request):
    """(recorded group, its step computed by the walkthrough) of each recorded world."""
    data = RECORDED[request.param]
    return data, walkthrough.compute(data)


def test_the_demo_world_is_recorded():
    assert "demo" in RECORDED


def test_the_page_is_what_the_script_writes_from_the_recordings_today():
    # Fails when scope.py's weights, loss or cited lines change, until the page is regenerated.
    assert walkthrough.page(RECORDED) == walkthrough.PAGE.read_text(), "regenerate: python docs/walkthrough.py"


def test_the_recorded_group_has_both_correct_and_wrong_rollouts(world):
    data, _ = world
    assert 0 < int(data["correct"].sum()) < len(data["rollouts"])


def test_the_weights_shown_average_one_within_each_subset(world):
    data, step = world
    w, correct = step["info"]["weight"], data["correct"]
    assert step["cfg"].weight_scale == "mean"
    for subset in (correct, ~correct):
        assert torch.isclose(w[subset].sum(), subset.sum().float())
        assert torch.isclose(step["softmax"][subset].sum(), torch.tensor(1.0))


def test_the_weights_follow_the_perplexities_their_equation_names(world):
    data, step = world
    info, correct = step["info"], data["correct"]
    # Eq. 4: on C, the higher the student's perplexity, the larger the weight; Eq. 5: on W, the lower the teacher's.
    for subset, nll, sign in ((correct, info["nll_student"], 1), (~correct, info["nll_teacher"], -1)):
        order = torch.argsort(sign * nll[subset])
        assert torch.all(info["weight"][subset][order].diff() >= 0)


def test_the_loss_shown_is_scope_loss_on_the_recorded_tensors(world):
    data, step = world
    loss, info = scope_loss(data["logp"], data["teacher_logp"], data["mask"], data["correct"], data["group"],
                            step["cfg"], step["norm"])
    assert step["loss"] == loss and step["norm"] == sum(data["step_tokens"])
    assert f"| loss, Eq. 6: loss_mle + loss_opd | {loss:+.6f} |" in walkthrough.PAGE.read_text()
    # On C the value is -w |y| / norm (rho = 1); on W, w times the summed advantages / norm.
    n = data["mask"].sum(1)
    expected = (torch.where(data["correct"], -n, info["kl_sum"]) * info["weight"]).sum() / step["norm"]
    assert torch.isclose(loss, expected)


def test_every_cited_line_of_scope_py_holds_the_code_the_page_quotes():
    source = (ROOT / "scope.py").read_text().splitlines()
    for name, (line, code) in walkthrough.lines().items():
        assert code.startswith(" ".join(source[line - 1].split())), name
