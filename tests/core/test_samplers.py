"""Sampler configs: parity with independent implementations of LLaDA's and Dream's reference
samplers, exact TIE under every sampler, refusals, bad input, serialisation.

The ``reference_llada`` and ``reference_dream`` functions below are written from the reference
code's documented behaviour (``ML-GSAI/LLaDA`` ``generate.py``; Dream's
``generation_utils.py``: ``diffusion_generate`` / ``_sample``) and share no code with the
package: their own schedule, their own top-p/top-k filters, their own Gumbel arithmetic
(LLaDA's float64 ``exp(l) / (-log u)^T``), whole-sequence masks and ``topk``. Where the
references draw from a global RNG they draw here the same keyed numbers the package draws
(``step_noise_generator(seed, step, stream)`` over the answer span; categorical sampling
and Dream's multinomial position sampling by the Gumbel trick on those numbers). They follow
one documented deviation of the package: the mask token is never committed (the runner-up is).
Equal confidences (the EOS switches give confidence 0 to every EOS/EoT choice) are ranked by
``torch.topk`` over the whole row, as the references rank them.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import replicas as R
import torch

import tie_tracing as tt
from tie_tracing.core.commit import step_noise_generator
from tie_tracing.core.samplers import DreamSampler, LLaDASampler
from tie_tracing.tracing.reference import reference_ie

PROMPTS = [
    "where was ada vell born",
    "when was mara tov born",
    "what city was kess born",
]
FACTS = [
    tt.Fact("ada vell", "where was ada vell born", "lisbon porto paris 1962", id="s0"),
    tt.Fact("mara tov", "who wrote the book of mara tov", "orion lyra", id="s1"),
]


@pytest.fixture(scope="module")
def models():
    return {
        "llada": R.wrap(R.LLaDAReplica()),
        "dream": R.wrap(R.dream_replica()),
        "tiny-mdlm": R.wrap(R.tiny_mdlm()),
    }


def prompt_batch(model, gen_length: int) -> tuple[torch.Tensor, int]:
    ids = [model.tokenizer(p)["input_ids"] for p in PROMPTS]
    assert len({len(i) for i in ids}) == 1
    prompt = torch.tensor(ids)
    x = torch.cat([prompt, torch.full((len(ids), gen_length), model.mask_token_id)], 1)
    return x, prompt.shape[1]


def keyed(seed: int, step: int, stream: int, shape) -> torch.Tensor:
    return torch.rand(shape, generator=step_noise_generator(seed, step, stream))


def raw_forward(model, x: torch.Tensor, shift: bool) -> torch.Tensor:
    with torch.no_grad():
        logits = model._module(input_ids=x).logits.float()
    if shift:  # Dream's reference shifts its own logits
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    return logits


def no_mask_argmax(scores: torch.Tensor, mask_id: int) -> torch.Tensor:
    scores = scores.clone()
    scores[..., mask_id] = -math.inf
    return scores.argmax(-1)


# -- independent reference implementations -------------------------------------------------


def reference_llada(
    model,
    x: torch.Tensor,
    prompt_len: int,
    *,
    steps: int,
    block_length: int,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    logits_eos_inf: bool = False,
    confidence_eos_eot_inf: bool = False,
    eos: int = -1,
    eot: int = -1,
    seeds,
) -> torch.Tensor:
    """LLaDA's generate(), states after each step ``[B, steps, seq]``."""
    mask_id = model.mask_token_id
    x = x.clone()
    batch, seq = x.shape
    gen_length = seq - prompt_len
    prompt_index = x != mask_id
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    per_block = steps // num_blocks
    states = []
    for b in range(num_blocks):
        lo = prompt_len + b * block_length
        block_masked = (x[:, lo : lo + block_length] == mask_id).sum(1)
        counts = (
            torch.zeros(batch, per_block, dtype=torch.long) + (block_masked // per_block)[:, None]
        )
        for r in range(batch):
            counts[r, : int(block_masked[r] % per_block)] += 1
        for i in range(per_block):
            step = b * per_block + i
            mask_index = x == mask_id
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                both = raw_forward(model, torch.cat([x, un_x]), shift=False)
                cond, uncond = both[:batch], both[batch:]
                logits = uncond + (cfg_scale + 1) * (cond - uncond)
            else:
                logits = raw_forward(model, x, shift=False)
            if logits_eos_inf:
                logits[:, :, eos] = -math.inf
            if temperature > 0:
                u = torch.full((batch, seq, logits.shape[-1]), 0.5, dtype=torch.float64)
                for r, s in enumerate(seeds):
                    u[r, prompt_len:] = keyed(s, step, 0, (gen_length, logits.shape[-1])).double()
                noisy = logits.double().exp() / (-torch.log(u.clamp_min(1e-20))) ** temperature
                x0 = no_mask_argmax(noisy, mask_id)
            else:
                x0 = no_mask_argmax(logits, mask_id)
            if confidence_eos_eot_inf:  # at temperature 0 both land on the logits
                logits[:, :, eos] = -math.inf
                logits[:, :, eot] = -math.inf
            if remasking == "low_confidence":
                p = torch.softmax(logits, dim=-1)
                x0_p = p.gather(-1, x0[..., None])[..., 0]
            else:
                x0_p = torch.zeros(batch, seq)
                for r, s in enumerate(seeds):
                    x0_p[r, prompt_len:] = keyed(s, step, 1, (gen_length,))
            x0_p[:, prompt_len + (b + 1) * block_length :] = -math.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, torch.full_like(x0_p, -math.inf))
            for r in range(batch):  # generate.py's 1-D top-k over the whole row, ties included
                pick = torch.topk(confidence[r], int(counts[r, i])).indices
                x[r, pick] = x0[r, pick]
            states.append(x.clone())
    return torch.stack(states, 1)


def nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = torch.softmax(sorted_logits, -1).cumsum(-1)
    remove = cumulative > top_p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False
    full = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, remove)
    return logits.masked_fill(full, torch.finfo(logits.dtype).min)


def reference_dream(
    model,
    x: torch.Tensor,
    prompt_len: int,
    *,
    steps: int,
    alg: str,
    alg_temp=None,
    temperature: float = 0.0,
    top_p=None,
    top_k=None,
    eps: float = 1e-3,
    seeds,
) -> torch.Tensor:
    """Dream's _sample(), states after each step ``[B, steps, seq]`` (rows coupled by the
    batch-mean masked count, as the reference has them)."""
    mask_id = model.mask_token_id
    x = x.clone()
    batch, seq = x.shape
    gen = seq - prompt_len
    timesteps = torch.linspace(1, eps, steps + 1)
    states = []
    for i in range(steps):
        mask_index = x == mask_id
        logits = raw_forward(model, x, shift=True)
        t, s = timesteps[i], timesteps[i + 1]
        # sample_tokens on every position (rows keep their own keyed noise)
        scaled = logits / temperature if temperature > 0 else logits
        if top_p is not None and top_p < 1:
            scaled = nucleus(scaled, top_p)
        if top_k is not None:
            kth = torch.topk(scaled, min(top_k, scaled.shape[-1]))[0][..., -1, None]
            scaled = scaled.masked_fill(scaled < kth, torch.finfo(scaled.dtype).min)
        probs = torch.softmax(scaled, dim=-1)
        if temperature > 0:
            g = torch.zeros_like(probs)
            for r, sd in enumerate(seeds):
                u = keyed(sd, i, 0, (gen, probs.shape[-1]))
                g[r, prompt_len:] = -torch.log(-torch.log(u.clamp_min(1e-20)))
            x0 = no_mask_argmax(torch.log_softmax(scaled, -1) + g, mask_id)
        else:
            x0 = no_mask_argmax(probs, mask_id)
        confidence = probs.gather(-1, x0[..., None])[..., 0]
        if alg == "topk_margin":
            top = torch.sort(probs, dim=-1, descending=True).values
            confidence = top[..., 0] - top[..., 1]
        elif alg == "entropy":
            confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            u = torch.ones(batch, seq)
            for r, sd in enumerate(seeds):
                u[r, prompt_len:] = keyed(sd, i, 1, (gen,))
            transfer = mask_index & (u < p_transfer)
            x[transfer] = x0[transfer]
        else:
            num_mask_token = mask_index.sum() / mask_index.shape[0]
            n = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
            full_confidence = torch.full_like(x, -math.inf, dtype=logits.dtype)
            full_confidence[mask_index] = confidence[mask_index]
            if n > 0:
                if alg_temp is None or alg_temp == 0:
                    _, transfer_index = torch.topk(full_confidence, n)
                else:
                    weights = torch.softmax(full_confidence / alg_temp, dim=-1)
                    g = torch.zeros(batch, seq)
                    for r, sd in enumerate(seeds):
                        u = keyed(sd, i, 2, (gen,))
                        g[r, prompt_len:] = -torch.log(-torch.log(u.clamp_min(1e-20)))
                    _, transfer_index = torch.topk(torch.log(weights) + g, n)
                x_ = torch.full_like(x, mask_id)
                x_[mask_index] = x0[mask_index]
                rows = torch.arange(batch)[:, None].expand_as(transfer_index)
                x[rows, transfer_index] = x_[rows, transfer_index]
        states.append(x.clone())
    return torch.stack(states, 1)


# -- parity --------------------------------------------------------------------------------

LLADA_CASES = {
    "low_confidence": dict(),
    "random": dict(remasking="random"),
    "blocks": dict(block_length=2),
    "random-blocks": dict(remasking="random", block_length=3),
    "cfg": dict(cfg_scale=0.7),
    "cfg-blocks-random": dict(cfg_scale=1.5, block_length=2, remasking="random"),
    "temperature": dict(temperature=0.8),
    "temperature-blocks": dict(temperature=1.3, block_length=3),
    "temperature-cfg": dict(temperature=0.5, cfg_scale=0.5),
}


@pytest.mark.parametrize("case", list(LLADA_CASES))
def test_llada_sampler_matches_reference(models, case):
    """LLaDASampler commits token for token what LLaDA's generate() does (replica, real names)."""
    model = models["llada"]
    kw = LLADA_CASES[case]
    gen, steps = 6, 6
    x, p = prompt_batch(model, gen)
    seeds = [11, 12, 13]
    sampler = LLaDASampler(**kw)
    out = model.denoise(x, answer_start=p, steps=steps, sampler=sampler, seeds=seeds)
    ref = reference_llada(
        model, x, p, steps=steps, block_length=kw.get("block_length") or gen, seeds=seeds,
        **{k: v for k, v in kw.items() if k != "block_length"},
    )  # fmt: skip
    assert torch.equal(out.states, ref), case
    assert not (out.states[:, -1, p:] == model.mask_token_id).any()
    assert out.config["sampler"] == sampler.to_dict()


def test_llada_eos_switches_match_reference(models):
    """logits_eos_inf and confidence_eos_eot_inf follow generate() (temperature 0) and change
    the trajectory (the chosen ids are tokens the plain run commits)."""
    model = models["llada"]
    x, p = prompt_batch(model, 6)
    plain = model.denoise(x, answer_start=p, steps=6, sampler=LLaDASampler(), seeds=[0, 1, 2])
    first = plain.states[:, 0, p:]
    committed = first[first != model.mask_token_id]
    eos, eot = int(committed[0]), int(committed[-1])
    for kw in (dict(logits_eos_inf=True), dict(confidence_eos_eot_inf=True), dict(logits_eos_inf=True, confidence_eos_eot_inf=True)):  # fmt: skip
        sampler = LLaDASampler(eos_token_id=eos, eot_token_id=eot, **kw)
        out = model.denoise(x, answer_start=p, steps=6, sampler=sampler, seeds=[0, 1, 2])
        ref = reference_llada(model, x, p, steps=6, block_length=6, eos=eos, eot=eot, seeds=[0, 1, 2], **kw)  # fmt: skip
        assert torch.equal(out.states, ref), kw
        assert not torch.equal(out.states, plain.states), kw
    no_eos = LLaDASampler(logits_eos_inf=True, eos_token_id=eos)
    final = model.denoise(x, answer_start=p, steps=6, sampler=no_eos, seeds=[0, 1, 2]).states
    assert not (final[:, -1, p:] == eos).any()


DREAM_CASES = {
    "origin": dict(alg="origin"),
    "maskgit_plus": dict(alg="maskgit_plus"),
    "topk_margin": dict(alg="topk_margin"),
    "entropy": dict(alg="entropy"),
    "entropy-alg_temp": dict(alg="entropy", alg_temp=0.5),
    "maskgit-top_p": dict(alg="maskgit_plus", top_p=0.3),
    "margin-top_k": dict(alg="topk_margin", top_k=3),
    "sampled": dict(alg="maskgit_plus", temperature=0.7, top_p=0.9),
    "sampled-top_k-alg_temp": dict(alg="entropy", temperature=1.2, top_k=5, alg_temp=0.2),
    "origin-sampled": dict(alg="origin", temperature=0.9, top_p=0.95),
}


@pytest.mark.parametrize("case", list(DREAM_CASES))
def test_dream_sampler_matches_reference(models, case):
    """DreamSampler commits token for token what Dream's _sample() does: coupled=True on the
    batch, and the per-row default equals the reference run on each row alone."""
    model = models["dream"]
    kw = DREAM_CASES[case]
    x, p = prompt_batch(model, 7)
    seeds, steps = [5, 6, 7], 5
    coupled = model.denoise(
        x, answer_start=p, steps=steps, sampler=DreamSampler(coupled=True, **kw), seeds=seeds
    )
    ref = reference_dream(model, x, p, steps=steps, seeds=seeds, **kw)
    assert torch.equal(coupled.states, ref), case
    per_row = model.denoise(x, answer_start=p, steps=steps, sampler=DreamSampler(**kw), seeds=seeds)
    for r in range(len(seeds)):
        alone = reference_dream(model, x[r : r + 1], p, steps=steps, seeds=seeds[r : r + 1], **kw)
        assert torch.equal(per_row.states[r : r + 1], alone), (case, r)
    assert not (ref[:, -1, p:] == model.mask_token_id).any()


def test_dream_transfer_schedule():
    """Dream's counts: int(m·(1 − s/t)) per step on linspace(1, eps, T+1), the rest at the last step."""
    grid = torch.linspace(1, 1e-3, 5)
    left, expected = 7, []
    for i in range(4):
        n = int(left * (1 - float(grid[i + 1]) / float(grid[i]))) if i < 3 else left
        expected.append(n)
        left -= n
    assert DreamSampler().expected_counts(7, 4) == expected
    assert sum(expected) == 7 and expected[-1] >= 1


def test_default_sampler_is_the_historical_one(models):
    """sampler=LLaDASampler() and the shorthands give the same trajectory and record the sampler."""
    model = models["tiny-mdlm"]
    a = tt.diffuse(model, FACTS, steps=4, temperature=0.7, seed=3)
    b = tt.diffuse(model, FACTS, steps=4, sampler=LLaDASampler(temperature=0.7), seed=3)
    c = tt.diffuse(model, FACTS, steps=4, sampler={"name": "llada", "temperature": 0.7}, seed=3)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.tokens, c.tokens)
    assert a.config["sampler"] == LLaDASampler(temperature=0.7).to_dict() == b.config["sampler"]
    assert a.config["temperature"] == 0.7


# -- exact TIE under every sampler ------------------------------------------------------------

TIE_SAMPLERS = {
    "llada-random": LLaDASampler(remasking="random"),
    "llada-random-temperature": LLaDASampler(remasking="random", temperature=0.9),
    "llada-cfg": LLaDASampler(cfg_scale=0.8),
    "llada-cfg-blocks": LLaDASampler(cfg_scale=0.5, block_length=2, temperature=0.6),
    "llada-eos": LLaDASampler(
        logits_eos_inf=True, confidence_eos_eot_inf=True, eos_token_id=9, eot_token_id=10
    ),  # fmt: skip
    "llada-counts": LLaDASampler(transfer_counts=(2, 0, 1, 1)),
    "dream-origin": DreamSampler(alg="origin"),
    "dream-origin-sampled": DreamSampler(alg="origin", temperature=0.8),
    "dream-maskgit": DreamSampler(alg="maskgit_plus"),
    "dream-margin-top_k": DreamSampler(alg="topk_margin", top_k=4),
    "dream-entropy-alg_temp": DreamSampler(alg="entropy", alg_temp=0.3),
    "dream-sampled": DreamSampler(alg="maskgit_plus", temperature=0.7, top_p=0.8, coupled=True),
}


def _trace(model, facts, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tt.trace_tie(model, facts, progress=False, **kw)


@pytest.mark.parametrize("name", list(TIE_SAMPLERS))
def test_engine_equals_reference_under_each_sampler(models, name):
    """The batched, memoised TIE sweep equals the slow hook reference within 1e-5 for this sampler."""
    model = models["tiny-mdlm"]
    sampler = TIE_SAMPLERS[name]
    result = _trace(model, FACTS[:1], steps=4, nu=2.0, n_noise=2, seed=3, sampler=sampler)
    assert result.config["sampler"] == sampler.bind(model).to_dict()
    ref = reference_ie(model, FACTS[0], steps=4, nu=2.0, n_noise=2, seed=3, sampler=sampler)
    assert torch.equal(torch.isnan(ref["ie"]), torch.isnan(result.ie[0]))
    torch.testing.assert_close(
        torch.nan_to_num(result.ie[0]), torch.nan_to_num(ref["ie"]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(result.lp_clean[0], ref["lp_clean"], atol=1e-5, rtol=0)
    torch.testing.assert_close(result.lp_corrupt[0], ref["lp_corrupt"], atol=1e-5, rtol=0)
    assert torch.nan_to_num(result.ie).abs().max() > 0  # a real effect was compared


def test_sampled_trace_clean_run_is_the_sampler_s_sample(models):
    """Under a sampled Dream sampler the traced clean trajectory is what diffuse samples with that seed."""
    model = models["tiny-mdlm"]
    sampler = DreamSampler(alg="entropy", temperature=0.9, alg_temp=0.5)
    result = _trace(model, FACTS[:1], steps=4, nu=2.0, seed=7, sampler=sampler)
    sample = tt.diffuse(model, FACTS[:1], steps=4, sampler=sampler, seed=7)
    assert torch.equal(result.clean_tokens[0], sample.answer_tokens(0))


def test_cfg_patched_run_records_sampler_and_leaves_unconditional_rows(models):
    """run_patched under CFG records the sampler; its noise acts on the conditional rows only
    (the clean row of a mixed run equals a clean run alone)."""
    model = models["tiny-mdlm"]
    q = tt.tracing.encode_query(model, FACTS[0])
    s = LLaDASampler(cfg_scale=1.0)
    alone = tt.tracing.run_patched(model, q, steps=4, sampler=s)
    noise = torch.randn(1, len(q.subject_positions), model.hidden_size) * 3
    mixed = tt.tracing.run_patched(
        model, q, steps=4, rows=2, noise=noise, noise_rows=[1], sampler=s
    )
    assert torch.equal(mixed.states[0], alone.states[0])
    assert alone.config["sampler"] == s.to_dict()


def test_trace_config_round_trips_with_the_sampler(models, tmp_path):
    """The sampler dict in a TIEResult's config survives save/load and concatenation."""
    model = models["tiny-mdlm"]
    sampler = DreamSampler(alg="topk_margin", top_p=0.9)
    result = _trace(model, FACTS, steps=2, nu=2.0, sampler=sampler, modules="resid")
    loaded = tt.TIEResult.load(result.save(tmp_path / "r.safetensors"))
    assert loaded.config["sampler"] == sampler.to_dict() == result.config["sampler"]
    assert tt.core.make_sampler(loaded.config["sampler"]) == sampler


# -- threshold decoding and refusals -------------------------------------------------------


def split_threshold(model, fact: tt.Fact) -> float:
    """A threshold between the 2nd and 3rd highest step-0 confidences of ``fact``'s answer."""
    q = tt.tracing.encode_query(model, fact)
    with torch.no_grad():
        logits = model.forward_logits(q.input_ids(model.mask_token_id))[0, q.answer_start :]
    top = torch.softmax(logits.float(), -1).max(-1).values.sort(descending=True).values
    assert top[1] > top[2]
    return float((top[1] + top[2]) / 2)


def test_threshold_run_is_traced_with_its_recorded_counts(models):
    """A fixed-T threshold run's per-step counts, given back as transfer_counts, reproduce it;
    threshold commits at least the schedule's count and more where confident; TIE of the
    recorded schedule equals the reference."""
    model = models["tiny-mdlm"]
    fact = FACTS[:1]
    threshold = split_threshold(model, FACTS[0])
    run = tt.diffuse(model, fact, steps=4, sampler=LLaDASampler(threshold=threshold))
    plain = tt.diffuse(model, fact, steps=4)
    counts = run.transfer_counts(0)
    assert sum(counts) == run.answer_lengths[0] and counts != plain.transfer_counts(0)
    assert counts[0] == 2
    recorded = LLaDASampler(transfer_counts=counts)
    again = tt.diffuse(model, fact, steps=4, sampler=recorded)
    assert torch.equal(again.tokens, run.tokens)
    for sampler in (recorded, LLaDASampler(threshold=threshold)):
        result = _trace(model, fact, steps=4, nu=2.0, n_noise=2, sampler=sampler)
        ref = reference_ie(model, fact[0], steps=4, nu=2.0, n_noise=2, sampler=sampler)
        torch.testing.assert_close(
            torch.nan_to_num(result.ie[0]), torch.nan_to_num(ref["ie"]), atol=1e-5, rtol=0
        )
    assert torch.equal(result.clean_tokens[0], run.answer_tokens(0))


@pytest.mark.parametrize(
    "sampler, message",
    [
        (tt.core.FastDLLMSampler(cache="prefix"), "KV cache"),
        (tt.core.FastDLLMSampler(cache="dual", threshold=None), "KV cache"),
        (
            tt.core.FastDLLMSampler(cache="none", threshold=0.9, early_stop=True),
            "number of forwards",
        ),
        (tt.core.ReMaskingSampler(remask=0.1), "re-masks committed tokens"),
        (tt.core.ReMaskingSampler(remask=0.0, self_conditioning=True), "self-conditions"),
    ],
    ids=["prefix-cache", "dual-cache", "threshold-early-stop", "remasking", "self-conditioning"],
)
def test_stateful_samplers_are_refused(models, sampler, message):
    """Samplers that carry state between steps (or vary the forwards) are refused by TIE, diffuse and run_patched."""
    model = models["tiny-mdlm"]
    with pytest.raises(tt.UnsupportedSamplerError, match=message):
        _trace(model, FACTS[:1], steps=2, nu=2.0, sampler=sampler)
    with pytest.raises(tt.UnsupportedSamplerError, match=message):
        tt.diffuse(model, FACTS[:1], steps=2, sampler=sampler)
    with pytest.raises(tt.UnsupportedSamplerError, match=message):
        tt.tracing.run_patched(model, FACTS[0], steps=2, sampler=sampler.to_dict())


def test_cache_free_fixed_T_equivalent_is_traced_exactly(models):
    """FastDLLMSampler(cache='none', early_stop=False) runs as its fixed-T LLaDA equivalent, exactly."""
    model = models["tiny-mdlm"]
    fast = tt.core.FastDLLMSampler(cache="none", threshold=0.03, block_length=2, early_stop=False)
    rule = fast.without_cache()
    result = _trace(model, FACTS[:1], steps=4, nu=2.0, sampler=rule, modules="resid")
    ref = reference_ie(model, FACTS[0], steps=4, nu=2.0, modules=("resid",), sampler=rule)
    torch.testing.assert_close(
        torch.nan_to_num(result.ie[0]), torch.nan_to_num(ref["ie"]), atol=1e-5, rtol=0
    )
    assert result.config["sampler"]["threshold"] == 0.03
    direct = tt.diffuse(model, FACTS, steps=4, sampler=fast)
    assert torch.equal(direct.tokens, tt.diffuse(model, FACTS, steps=4, sampler=rule).tokens)
    assert direct.config["sampler"]["name"] == "fast-dllm"


def test_self_conditioning_model_is_refused():
    """A model whose config says it self-conditions is refused with the reason."""
    module = R.tiny_mdlm()
    module.config.self_conditioning = True
    model = R.wrap(module)
    with pytest.raises(tt.UnsupportedSamplerError, match="self-conditions.*previous step"):
        _trace(model, FACTS[:1], steps=2, nu=2.0)


# -- bad input -----------------------------------------------------------------------------

BAD = [
    (
        lambda m: tt.core.make_sampler("greedy"),
        ValueError,
        r"unknown sampler 'greedy'; the samplers are \['dream', 'fast-dllm', 'llada', 'remdm'\]",
    ),  # fmt: skip
    (
        lambda m: DreamSampler(alg="greedy"),
        ValueError,
        r"unknown Dream alg 'greedy'; choose one of \('origin', 'maskgit_plus', 'topk_margin', 'entropy'\)",
    ),  # fmt: skip
    (
        lambda m: LLaDASampler(remasking="top"),
        ValueError,
        r"unknown remasking 'top'; choose one of \('low_confidence', 'random'\)",
    ),  # fmt: skip
    (
        lambda m: tt.core.make_sampler({"name": "llada", "steps": 3}),
        ValueError,
        r"unknown LLaDASampler settings \['steps'\]",
    ),  # fmt: skip
    (
        lambda m: tt.diffuse(m, FACTS[1], steps=3, sampler=LLaDASampler(block_length=1)),
        ValueError,
        "divisible",
    ),  # fmt: skip
    (lambda m: LLaDASampler(block_length=0), ValueError, "block_length"),
    (lambda m: LLaDASampler(cfg_scale=-0.5), ValueError, "cfg_scale must be ≥ 0"),
    (lambda m: DreamSampler(top_p=0.0), ValueError, r"top_p must lie in \(0, 1\]"),
    (lambda m: DreamSampler(top_p=1.5), ValueError, r"top_p must lie in \(0, 1\]"),
    (lambda m: DreamSampler(top_k=0), ValueError, "top_k must be an integer ≥ 1"),
    (lambda m: DreamSampler(temperature=-1.0), ValueError, "temperature must be ≥ 0"),
    (lambda m: LLaDASampler(threshold=1.5), ValueError, "threshold"),
    (
        lambda m: tt.diffuse(m, FACTS[1], steps=2, sampler=LLaDASampler(transfer_counts=(1, 0))),
        ValueError,
        "sum to 1, not its 2",
    ),  # fmt: skip
    (
        lambda m: tt.diffuse(m, FACTS[1], steps=2, temperature=0.5, sampler=LLaDASampler()),
        ValueError,
        "disagrees",
    ),  # fmt: skip
    (
        lambda m: tt.diffuse(m, FACTS[1], steps=2, block_length=1, sampler="dream"),
        ValueError,
        "shorthand of LLaDASampler",
    ),  # fmt: skip
]


@pytest.mark.parametrize("call, error, message", BAD)
def test_bad_sampler_input(models, call, error, message):
    """Unknown samplers/algorithms list the choices; out-of-range settings name themselves."""
    with pytest.raises(error, match=message):
        call(models["tiny-mdlm"])


def test_family_mismatch_is_refused_unless_allowed(models):
    """A Dream sampler on a LLaDA model is an error naming both; allow_mismatch=True runs it."""
    llada = models["llada"]
    with pytest.raises(ValueError, match="DreamSampler is the dream family's sampler.*'llada'.*allow_mismatch"):  # fmt: skip
        tt.diffuse(llada, FACTS[1], steps=2, sampler="dream")
    with pytest.raises(ValueError, match="allow_mismatch"):
        _trace(llada, FACTS[1:], steps=2, nu=1.0, sampler=DreamSampler())
    out = tt.diffuse(llada, FACTS[1], steps=2, sampler=DreamSampler(allow_mismatch=True))
    assert out.config["sampler"]["allow_mismatch"] is True
    # LLaDA's sampler is the default on every MDLM, Dream included
    tt.diffuse(models["dream"], FACTS[1], steps=2, sampler=LLaDASampler())


@pytest.mark.parametrize(
    "sampler",
    [
        LLaDASampler(),
        LLaDASampler(
            remasking="random", block_length=4, cfg_scale=0.5, transfer_counts=(1, 2, 3)
        ),  # fmt: skip
        DreamSampler(alg="entropy", alg_temp=0.1, top_p=0.9, top_k=7, coupled=True),
        tt.core.FastDLLMSampler(),
        tt.core.ReMaskingSampler(),
    ],
)
def test_sampler_dicts_round_trip(sampler):
    """to_dict → JSON-able dict → make_sampler gives an equal config."""
    import json

    data = json.loads(json.dumps(sampler.to_dict()))
    assert tt.core.make_sampler(data) == sampler
    assert type(sampler).from_dict(data) == sampler
    assert dataclasses.replace(sampler) == sampler


def test_ranked_commit_equals_the_classic_commit():
    """The general per-row commit, fed low-confidence scores, commits what the historical
    commit() does (random logits, blocks, several rows)."""
    from tie_tracing.core.samplers import commit, commit_ranked

    gen = torch.Generator().manual_seed(0)
    x = torch.tensor([[1, 5, 3, 3, 3, 3, 3], [1, 6, 3, 7, 3, 3, 3]])
    logits = torch.randn(2, 5, 12, generator=gen) * 3
    logits[0, 2, 3] = 50.0  # the mask token wins here: both take the runner-up
    for block, n in (((0, 5), 2), ((1, 4), 1), ((0, 5), 3)):
        classic = commit(x, logits, answer_start=2, block=block, n_commit=n, mask_id=3)
        probs = torch.softmax(logits, -1)
        choice = no_mask_argmax(probs, 3)
        eligible = x[:, 2:] == 3
        eligible[:, : block[0]] = False
        eligible[:, block[1] :] = False
        ranked = commit_ranked(
            x,
            answer_start=2,
            choice=choice,
            confidence=probs.gather(-1, choice[..., None])[..., 0],
            eligible=eligible,
            counts=torch.tensor([n, n]),
        )
        assert torch.equal(ranked, classic), (block, n)
