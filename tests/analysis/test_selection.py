"""select_coordinate: Eq. 5 exactly, restrictions, and a clear error for each misuse."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tie_tracing.analysis.selection import select_coordinate
from tie_tracing.core.results import TIEResult


def brute_force(tie, beta, nb):
    """Eq. 5 by loops over cells."""
    _, n_l, n_k, n_m = tie.shape
    best, arg = -math.inf, None
    scores = torch.empty(n_l, n_k, n_m, dtype=torch.float64)
    for la in range(n_l):
        for k in range(n_k):
            for m in range(n_m):
                s = float(tie[:, la, k, m].abs().mean())
                if nb is not None:
                    s -= beta * float(nb[:, la, k, m].abs().mean())
                scores[la, k, m] = s
                if s > best:
                    best, arg = s, (la, k, m)
    return arg, scores


@pytest.mark.parametrize("beta", [0.0, 0.3, 2.0])
def test_matches_brute_force_eq5(beta):
    """Scores and argmax equal the loop over cells of mean|TIE_f| - β mean|TIE_g|."""
    g = torch.Generator().manual_seed(0)
    tie = torch.randn(5, 4, 6, 3, generator=g, dtype=torch.float64)
    nb = torch.randn(7, 4, 6, 3, generator=g, dtype=torch.float64)
    c = select_coordinate(tie, beta=beta, neighbours=nb)
    arg, scores = brute_force(tie, beta, nb)
    assert c.index == arg and (c.layer, c.step) == arg[:2]
    assert c.module == ("resid", "attn", "mlp")[arg[2]]
    torch.testing.assert_close(c.scores, scores)
    assert c.score == pytest.approx(float(scores[arg])) and c.beta == beta


def test_sign_is_ignored_and_beta_zero_ignores_neighbours():
    """A large negative effect wins under |·|; β = 0 gives the same choice with neighbours."""
    tie = torch.zeros(2, 3, 2, 3)
    tie[:, 2, 1, 1] = -5.0
    tie[:, 0, 0, 0] = 1.0
    c = select_coordinate(tie)
    assert (c.layer, c.step, c.module) == (2, 1, "attn")
    nb = torch.full((4, 3, 2, 3), 100.0)
    assert select_coordinate(tie, neighbours=nb).index == c.index


def test_tie_result_input_uses_labels():
    """A TIEResult is scored on its tie with its layer/step/module labels."""
    r = TIEResult.synthetic(n_facts=3, n_layers=4, n_steps=4)
    r = dataclasses.replace(r, layers=(10, 11, 12, 13))
    c = select_coordinate(r)
    t = select_coordinate(r.tie)
    assert c.index == t.index and c.layer == 10 + t.layer
    assert c.layers == (10, 11, 12, 13) and c.modules == r.modules
    n = select_coordinate(r, beta=1.0, neighbours=r.select_facts([0]))
    assert n.scores.shape == (4, 4, 3)


def test_restriction_by_modules_and_steps():
    """Restricted cells cannot win and are NaN in scores."""
    tie = torch.zeros(2, 3, 4, 3)
    tie[:, 0, 0, 2] = 9.0  # global winner: mlp at step 0
    tie[:, 1, 2, 0] = 1.0
    c = select_coordinate(tie, modules="resid", steps=[1, 2])
    assert (c.layer, c.step, c.module) == (1, 2, "resid")
    assert torch.isnan(c.scores[:, :, 1:]).all() and torch.isnan(c.scores[:, [0, 3], 0]).all()
    assert not torch.isnan(c.scores[:, 1:3, 0]).any()
    assert select_coordinate(tie, modules=["attn", "mlp"]).module == "mlp"


def test_ties_go_to_first_cell():
    """Equal scores: the first cell in [layer, step, module] order wins (with a warning that
    the choice is arbitrary when every cell ties)."""
    with pytest.warns(UserWarning, match="arbitrary"):
        assert select_coordinate(torch.ones(2, 2, 2, 3)).index == (0, 0, 0)
    tie = torch.ones(2, 2, 2, 3)
    tie[:, 1, 1, 2] = 2.0
    tie[:, 0, 1, 0] = 2.0
    assert select_coordinate(tie).index == (0, 1, 0)


def test_nan_outside_the_restriction_is_allowed():
    """NaN only matters in cells that are considered."""
    tie = torch.ones(2, 2, 2, 3)
    tie[:, :, :, 1] = float("nan")
    assert select_coordinate(tie, modules=["resid"]).module == "resid"


def test_unknown_facts_are_left_out_of_eq5():
    """A fact the model does not know (config['unknown_facts']) cannot move the choice."""
    r = TIEResult.synthetic(n_facts=3, n_layers=3, n_steps=4)
    tie = torch.zeros_like(r.tie)
    tie[:2, 1, 2, 0] = 1.0
    tie[2, 0, 0, 2] = 100.0  # the unknown fact's huge effect elsewhere
    r = dataclasses.replace(r, tie=tie, config=dict(r.config, unknown_facts=["f2"]))
    c = select_coordinate(r)
    assert (c.layer, c.step, c.module) == (1, 2, "resid") and c.score == pytest.approx(1.0)


def test_half_precision_tensor_input_runs_on_a_cpu_float_copy():
    """bf16 heatmaps (as a bf16/CUDA trace gives) select like float32; float64 keeps its dtype."""
    from tie_tracing.analysis.selection import _as_heatmaps

    g = torch.Generator().manual_seed(0)
    tie = torch.randn(4, 3, 5, 3, generator=g)
    x = tie.to(torch.bfloat16)
    got = _as_heatmaps(x, "heatmaps")[0]
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert _as_heatmaps(tie.double(), "heatmaps")[0].dtype == torch.float64
    c, ref = select_coordinate(x, modules="resid", steps=[1, 3]), select_coordinate(x.float())
    assert c.scores.dtype == torch.float32
    assert c.index == select_coordinate(x.float(), modules="resid", steps=[1, 3]).index
    assert select_coordinate(x).index == ref.index
    r = TIEResult.synthetic(n_facts=2)
    rb = dataclasses.replace(r, tie=r.tie.to(torch.bfloat16), ie=r.ie.to(torch.bfloat16))
    assert select_coordinate(rb, beta=0.5, neighbours=rb).module in r.modules
