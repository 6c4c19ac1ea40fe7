"""Tracing at scale: horizons, the immediate and attribution scans, memory budgets, fact shards."""

from __future__ import annotations

import functools
import math
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import tie_tracing as tt
from tie_tracing.core.results import tie_from_ie
from tie_tracing.tracing.budget import parse_memory, rows_per_forward
from tie_tracing.tracing.reference import reference_ie
from tie_tracing.tracing.tie import horizon_weight

from .. import replicas

ROOT = Path(__file__).resolve().parents[2]
FACTS = [
    tt.Fact("ada vell", "where was ada vell born", "lisbon porto paris", id="f0"),
    tt.Fact("mara tov", "who wrote the book of mara tov", "orion", id="f1"),
]


@functools.cache
def tiny() -> tt.core.TracedModel:
    return replicas.wrap(replicas.tiny_mdlm())


def trace(m, facts, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random replicas know no facts
        return tt.trace_tie(m, facts, progress=False, **kw)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal, NaN where the other is NaN."""
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(
        a.nan_to_num(), b.nan_to_num()
    )


# -- horizon -------------------------------------------------------------------------------


@pytest.mark.parametrize("horizon", [3, 4, 50])
def test_horizon_at_least_the_trajectory_is_the_exact_sweep(horizon):
    """horizon ≥ T - 1 gives the exact sweep bit for bit (IE, TIE, divergence) and leaves out no weight."""
    exact = trace(tiny(), FACTS, steps=4, nu=2.0, n_noise=2, seed=3)
    cut = trace(tiny(), FACTS, steps=4, nu=2.0, n_noise=2, seed=3, horizon=horizon)
    assert same(exact.ie, cut.ie) and torch.equal(exact.tie, cut.tie)
    assert torch.equal(exact.diverged, cut.diverged)
    assert cut.config["horizon"] == horizon and cut.config["horizon_weight"] == 0.0
    assert exact.config["horizon"] is None and exact.config["mode"] == "exact"


def test_horizon_weight_by_hand():
    """The weight a horizon leaves out, checked by hand, and its bound γ^(h+1)."""
    # T = 4, γ = 1/2: weights 1, 1/2, 1/4, 1/8 (sum 15/8); h = 1 leaves out 1/4 + 1/8 = 3/8
    assert horizon_weight(4, 0.5, 1) == pytest.approx(0.2)
    assert horizon_weight(4, 0.5, 0) == pytest.approx((7 / 8) / (15 / 8))
    assert horizon_weight(4, 1.0, 1) == pytest.approx(2 / 4)  # γ = 1: (T - h - 1) / T
    assert horizon_weight(4, 0.5, 3) == 0.0 and horizon_weight(4, 0.5, None) == 0.0
    for steps in (4, 8, 32, 128):
        for h in range(steps):
            assert horizon_weight(steps, 0.5, h) <= 0.5 ** (h + 1) + 1e-15


def test_horizon_equals_the_reference_where_followed_and_keeps_its_bound():
    """With h = 1 every IE the engine reports equals the slow reference's, every IE up to k + h
    (and every later IE of a run that did not diverge) is reported, and |TIE_h − TIE| stays
    within the stated bound."""
    m, h, steps = tiny(), 1, 4
    result = trace(m, FACTS, steps=steps, nu=2.0, n_noise=2, seed=3, horizon=h)
    assert result.config["horizon_weight"] == pytest.approx(horizon_weight(steps, 0.5, h))
    cut_somewhere = False
    for i, fact in enumerate(FACTS):
        ref = reference_ie(m, fact, steps=steps, nu=2.0, n_noise=2, seed=3)["ie"]
        ie = result.ie[i]
        known = ~torch.isnan(ie)
        torch.testing.assert_close(ie[known], ref[known], atol=1e-5, rtol=0)
        k = torch.arange(steps)
        now_or_later = (k[None, :] >= k[:, None])[None, :, None, :].expand_as(ie)
        near = (k[None, :] <= k[:, None] + h)[None, :, None, :].expand_as(ie)
        assert bool(known[now_or_later & near].all())
        never = (result.diverged[i] == 0)[..., None].expand_as(ie)  # no draw diverged
        assert bool(known[now_or_later & never].all())
        cut_somewhere |= bool((~known & now_or_later).any())
        torch.testing.assert_close(result.tie[i], tie_from_ie(ie, 0.5, nan_policy="omit"))
        exact_tie = tie_from_ie(ref, 0.5)
        for k0 in range(steps):
            w = horizon_weight(steps - k0, 0.5, h)
            later = ref[:, k0, :, k0 + h + 1 :]
            gap = (result.tie[i][:, k0] - exact_tie[:, k0]).abs()
            if later.shape[-1] == 0:  # nothing beyond the horizon
                assert bool((gap <= 1e-5).all())
                continue
            spread = (later - result.tie[i][:, k0, :, None]).abs().amax(-1)
            assert bool((gap <= w * spread + 1e-5).all())
    assert cut_somewhere  # the comparison is not vacuous: some future was cut


def test_bad_horizon_and_mode_are_named():
    """A negative horizon, a horizon outside mode='exact' and an unknown mode are refused."""
    with pytest.raises(ValueError, match="horizon must be ≥ 0"):
        trace(tiny(), FACTS[:1], steps=2, horizon=-1)
    with pytest.raises(ValueError, match="horizon applies to mode='exact'"):
        trace(tiny(), FACTS[:1], steps=2, horizon=1, mode="immediate")
    with pytest.raises(ValueError, match="mode must be one of"):
        trace(tiny(), FACTS[:1], steps=2, mode="fast")


# -- immediate effect and attribution -------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"lp": "raw"}, {"temperature": 0.7}])
def test_immediate_mode_is_the_exact_sweeps_first_term(kwargs):
    """mode='immediate' gives IE at k' = k bit for bit as the exact sweep, and equals the reference."""
    m = tiny()
    exact = trace(m, FACTS, steps=4, nu=2.0, n_noise=2, seed=3, **kwargs)
    imm = trace(m, FACTS, steps=4, nu=2.0, n_noise=2, seed=3, mode="immediate", **kwargs)
    diagonal = torch.diagonal(exact.ie, dim1=2, dim2=4).permute(0, 1, 3, 2)  # [f, l, k, m]
    assert torch.equal(imm.tie, diagonal)
    assert torch.equal(
        torch.diagonal(imm.ie, dim1=2, dim2=4), torch.diagonal(exact.ie, dim1=2, dim2=4)
    )
    steps = torch.arange(4)
    later = (steps[None, :] > steps[:, None])[None, None, :, None, :].expand_as(imm.ie)
    assert bool(imm.ie[later].isnan().all())
    assert torch.equal(imm.diverged, exact.diverged) and imm.config["mode"] == "immediate"
    ref = reference_ie(m, FACTS[0], steps=4, nu=2.0, n_noise=2, seed=3, **kwargs)["ie"]
    torch.testing.assert_close(
        imm.tie[0], torch.diagonal(ref, dim1=1, dim2=3).permute(0, 2, 1), atol=1e-5, rtol=0
    )
    assert imm.config["engine_stats"]["divergent_continuations"] == 0


class _LinearBlock(nn.Module):
    """A LLaDA-layout block that is linear in its input: x + attn_out(mean over positions) + ff."""

    def __init__(self, d: int):
        super().__init__()
        self.att_proj = nn.Linear(d, d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_proj = nn.Linear(d, d, bias=False)
        self.ff_out = nn.Linear(d, d, bias=False)

    def forward(self, x):
        mixed = self.att_proj(x).mean(dim=1, keepdim=True).expand_as(x)
        x = x + self.attn_out(mixed)
        return x + self.ff_out(self.ff_proj(x)), None


class _LinearLLaDA(nn.Module):
    """Logits linear in every site's output, and one token whose logit (+100) dominates the
    log-sum-exp, so that in float32 log softmax(logits)[a] = logits[a] − 100 exactly: the
    answer's log-probability is linear in each patched activation."""

    def __init__(self, d: int = 16, layers: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.config = SimpleNamespace(model_type="llada", architectures=["LLaDAModelLM"])
        blocks = nn.ModuleList([_LinearBlock(d) for _ in range(layers)])
        head = nn.Linear(d, replicas.VOCAB, bias=True)
        with torch.no_grad():
            head.weight.mul_(0.3)
            head.bias.zero_()
            head.bias[4] = 100.0  # [UNK] dominates every position's log-sum-exp
        self.model = nn.Module()
        self.model.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(replicas.VOCAB, d),
                blocks=blocks,
                ln_f=nn.Identity(),
                ff_out=head,
            )
        )
        self.pos = nn.Parameter(torch.randn(64, d) * 0.5)

    def forward(self, input_ids):
        t = self.model.transformer
        x = t["wte"](input_ids) + self.pos[: input_ids.shape[1]]
        for block in t["blocks"]:
            x, _ = block(x)
        return SimpleNamespace(logits=t["ff_out"](t["ln_f"](x)))


def test_attribution_is_exact_on_a_model_linear_in_the_patched_activation():
    """On a model whose LP is linear in every site's output, attribution = the exact immediate effect."""
    m = replicas.wrap(_LinearLLaDA())
    imm = trace(m, FACTS, steps=3, nu=20.0, n_noise=2, mode="immediate")
    att = trace(m, FACTS, steps=3, nu=20.0, n_noise=2, mode="attribution")
    assert imm.tie.abs().max() > 0.1  # real effects are compared
    torch.testing.assert_close(att.tie, imm.tie, atol=2e-4, rtol=1e-4)
    assert att.config["mode"] == "attribution" and bool(att.diverged.isnan().all())
    assert all(p.requires_grad for p in m._module.parameters())  # restored
    assert all(p.grad is None for p in m._module.parameters())  # no weight gradient left


def test_attribution_error_vanishes_with_the_corruption():
    """Attribution is first order: at step 0 (clean and corrupted states equal) its relative
    error shrinks as ν does (ν ≪ σ_emb ≈ 0.02 on the replica)."""
    errors = []
    for nu in (2e-3, 2e-4):
        imm = trace(tiny(), FACTS[:1], steps=3, nu=nu, mode="immediate").tie[..., 0, :]
        att = trace(tiny(), FACTS[:1], steps=3, nu=nu, mode="attribution").tie[..., 0, :]
        errors.append(float((imm - att).abs().max() / imm.abs().max()))
    assert errors[1] < 0.03 and errors[1] < errors[0] / 3, errors


def test_attribution_correlates_with_the_exact_scan_on_the_tiny_model():
    """On the embedded model attribution ranks the cells with the exact immediate effect
    (Spearman > 0.3; the estimate is first-order in a 3σ corruption, so agreement is partial,
    see benchmarks/RESULTS.md). Only the ranking is promised: on the world-v3 model the values
    themselves correlate at Pearson ≈ 0.18 (a few large cells are badly scaled)."""
    from scipy.stats import spearmanr

    m = tt.load_model("tiny-mdlm")
    facts = tt.load_facts("tiny", split="forget01")[:2]
    imm = tt.trace_tie(m, facts, steps=6, mode="immediate", progress=False)
    att = tt.trace_tie(m, facts, steps=6, mode="attribution", progress=False)
    a, b = imm.tie.flatten(), att.tie.flatten()
    assert float(spearmanr(a, b).correlation) > 0.3
    assert torch.equal(imm.lp_corrupt, att.lp_corrupt)


# -- memory budget ---------------------------------------------------------------------------


def test_results_do_not_depend_on_the_memory_budget():
    """A budget that allows one row per forward and one that allows all rows give the same tensors."""
    m = tiny()
    small = trace(m, FACTS, steps=4, nu=2.0, n_noise=2, max_memory=1)
    large = trace(m, FACTS, steps=4, nu=2.0, n_noise=2, max_memory="64GB")
    assert small.config["engine_stats"]["rows_per_forward"] == [1, 1]
    assert large.config["engine_stats"]["rows_per_forward"][0] > 50
    assert same(small.ie, large.ie) and torch.equal(small.tie, large.tie)
    assert torch.equal(small.diverged, large.diverged)
    a = trace(m, FACTS[:1], steps=4, nu=2.0, mode="attribution", max_memory="10KB")
    b = trace(m, FACTS[:1], steps=4, nu=2.0, mode="attribution", max_memory="1GB")
    torch.testing.assert_close(a.tie, b.tie, atol=1e-5, rtol=0)


def test_memory_sizes_parse_and_bad_ones_are_named():
    """Sizes in bytes or with units parse; others are errors that show the expected form."""
    assert parse_memory("2GB") == 2 * 10**9 and parse_memory("1.5 GiB") == 3 * 2**29
    assert parse_memory(4096) == 4096 and parse_memory("512") == 512
    for bad in ("lots", "2 GQ", -5, 0, True):
        with pytest.raises(ValueError, match="max_memory"):
            parse_memory(bad)
    with pytest.raises(ValueError, match="max_memory"):
        trace(tiny(), FACTS[:1], steps=2, max_memory="ten gigs")
    m = tiny()
    assert rows_per_forward(m, 20, 5, 10**12) == 4096  # capped
    assert rows_per_forward(m, 20, 5, 1) == 1
    assert rows_per_forward(m, 20, 5, 10**8, grad=True) < rows_per_forward(m, 20, 5, 10**8)


# -- fact shards -----------------------------------------------------------------------------


def test_shards_written_separately_merge_into_the_single_process_result(tmp_path):
    """Each shard traces its facts into one directory; resuming it yields the unsharded result."""
    m = tiny()
    facts = FACTS + [tt.Fact("kess", "what city was kess born in", "paris porto", id="f2")]
    whole = trace(m, facts, steps=3, nu=2.0)
    out = tmp_path / "sweep"
    part = trace(m, facts, steps=3, nu=2.0, out=out, shard=(1, 2))
    assert part.fact_ids == ("f1",)
    trace(m, facts, steps=3, nu=2.0, out=out, shard=(0, 2))
    merged = trace(m, facts, steps=3, nu=2.0, out=out)
    assert merged.config["engine_stats"]["forwards"] == 0  # all resumed from the files
    for name in ("tie", "ie", "lp_clean", "lp_corrupt", "diverged", "clean_tokens"):
        assert same(getattr(whole, name).float(), getattr(merged, name).float()), name
    with pytest.raises(ValueError, match="shard"):
        trace(m, facts, steps=3, nu=2.0, shard=(0, 2))
    with pytest.raises(ValueError, match="shard"):
        trace(m, facts, steps=3, nu=2.0, out=out, shard=(2, 2))
    with pytest.raises(ValueError, match="holds none of the 3 facts"):
        trace(m, facts, steps=3, nu=2.0, out=out, shard=(3, 4))


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a command in its own process group; on a timeout the whole group is killed."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    ) as proc:  # fmt: skip
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(
                f"timed out: {' '.join(cmd)}\n{out[-2000:]}\n{err[-2000:]}"
            ) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_torchrun_two_processes_equal_one(tmp_path):
    """`tie-tracing trace` under torch.distributed.run with 2 CPU (gloo) processes writes the
    same result as one process, bit for bit."""
    from tie_tracing.cli import write_facts_jsonl
    from tie_tracing.core.results import TIEResult

    path = write_facts_jsonl(tt.load_facts("tiny", split="forget01")[:2], tmp_path / "f.jsonl")
    common = ["trace", "--model", "tiny-mdlm", "--facts", str(path), "--steps", "3", "--quiet"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    torchrun += ["--nproc-per-node", "2", "-m", "tie_tracing.cli"]
    two = _run(torchrun + common + ["--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    one = _run([sys.executable, "-m", "tie_tracing.cli", *common, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-2000:]
    a = TIEResult.load(tmp_path / "one" / "trace.safetensors")
    b = TIEResult.load(tmp_path / "two" / "trace.safetensors")
    for name in ("tie", "ie", "lp_clean", "lp_corrupt", "lp_corrupt_draws", "diverged"):
        assert same(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.clean_tokens, b.clean_tokens) and a.fact_ids == b.fact_ids
    assert b.config["world_size"] == 2 and a.config["world_size"] == 1
    assert len(list((tmp_path / "two").glob("fact_*.safetensors"))) == 2


# -- GPU readiness ---------------------------------------------------------------------------


def test_gpu_llada_layout_benchmark_runs_reduced_on_cpu():
    """benchmarks/gpu_llada_layout.py runs at a reduced width on CPU and prints its figures."""
    run = _run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_llada_layout.py"),
            *("--width", "64", "--layers", "2", "--steps", "8", "16", "--threads", "1"),
        ]
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("T=")]
    assert len(lines) == 2 * 4  # 2 step counts × exact, horizon, immediate, attribution
    for line in lines:
        assert "wall=" in line and "peak=" in line and "rows/s=" in line
    assert not math.isnan(float(lines[0].split("rows/s=")[1].split()[0]))


def test_integrated_gradients_over_the_corruption():
    """ig_steps=n averages the gradient at noise scales (j − ½)/n: exact on a model linear in
    the patched activations (as plain attribution), recorded in the config, refused outside
    mode='attribution' and with replace=True, and a different estimate on a real model."""
    from tie_tracing.tracing.tie import ig_scales

    assert ig_scales(1) == (1.0,) and ig_scales(4) == (0.125, 0.375, 0.625, 0.875)
    m = replicas.wrap(_LinearLLaDA())
    imm = trace(m, FACTS, steps=3, nu=20.0, mode="immediate")
    ig = trace(m, FACTS, steps=3, nu=20.0, mode="attribution", ig_steps=3)
    torch.testing.assert_close(ig.tie, imm.tie, atol=2e-4, rtol=1e-4)
    assert ig.config["ig_steps"] == 3 and ig.config["engine_stats"]["backwards"] > 0
    with pytest.raises(ValueError, match="ig_steps=2 sets the attribution scan"):
        tt.TraceConfig(ig_steps=2)
    with pytest.raises(ValueError, match="ig_steps must be an integer ≥ 1"):
        tt.TraceConfig(mode="attribution", ig_steps=0)
    with pytest.raises(ValueError, match="replace=True"):
        trace(m, FACTS[:1], steps=2, nu=1.0, mode="attribution", ig_steps=2, replace=True)
    plain = trace(tiny(), FACTS[:1], steps=3, nu=2e-2, mode="attribution")
    two = trace(tiny(), FACTS[:1], steps=3, nu=2e-2, mode="attribution", ig_steps=2)
    assert not torch.equal(plain.tie, two.tie)  # the scales change the estimate on a real model
