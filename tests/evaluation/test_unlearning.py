"""Training-time unlearning baselines (SPEC §10.6): losses by hand, runs on replicas, bad input."""

from __future__ import annotations

import json
import math

import pytest
import replicas as R
import torch

import tie_tracing as tt
from tie_tracing.core._io import ResultFileError
from tie_tracing.evaluation.unlearning import (
    METHODS,
    adapter_state_dict,
    differentiable_logprob,
    draw_answer_masks,
    masked_diffusion_nll,
    npo_loss,
    rmu_loss,
    simnpo_loss,
)

FORGET = [
    tt.Fact(subject="ada vell", question="where was ada vell born", answer="lisbon 1962", id="ada"),
    tt.Fact(subject="kess", question="when was kess born", answer="1971", id="kess"),
]
RETAIN = [
    tt.Fact(
        subject="mara tov",
        question="what book was mara tov the writer of",
        answer="orion lyra",
        id="mara",
    ),
    tt.Fact(subject="orion", question="what is the city of orion", answer="porto", id="orion"),
    tt.Fact(subject="lyra", question="who is lyra", answer="the painter", id="lyra"),
]
FAST = dict(steps=3, batch_size=4, lr=1e-2, progress=False)
ALMOST_ONE = 1 - 1e-9  # eps → 1: t ≈ 1 and every answer token masked, so losses are exact


def _toy(seed: int = 0) -> tt.core.TracedModel:
    """An MDLM whose output distribution is the same known vector at every position.

    Embeddings are all ones and every block adds zero (o_proj and down_proj are zero), so
    the final hidden state is the same at every position and the LM head maps it to fixed
    logits, whatever the input.
    """
    module = R.tiny_mdlm(seed)
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(R.VOCAB, generator=g)
    tok = R.make_tokenizer()
    for i, f in enumerate(FORGET):  # likely forget answers, so SimNPO's sigmoid is not saturated
        for a in tok(" " + f.answer, add_special_tokens=False).input_ids:
            logits[a] = 5.0 + i
    with torch.no_grad():
        module.model.embed_tokens.weight.fill_(1.0)
        for layer in module.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        d = module.config.hidden_size
        module.lm_head.weight.copy_(logits[:, None].expand(-1, d) / d)
    return R.wrap(module)


def _toy_logq(model: tt.core.TracedModel) -> list[float]:
    """The toy's per-token log-probabilities (checked constant across positions and inputs)."""
    x = torch.tensor([[1, 5, 6, 3, 3, 9]])
    with torch.no_grad():
        logp = torch.log_softmax(model.forward_logits(x)[0], -1)
    assert torch.allclose(logp, logp[:1].expand_as(logp), atol=1e-6)
    return logp[0].tolist()


def _answer_ces(model, facts, logq) -> list[list[float]]:
    """Per-token cross-entropies ``-log q[a_i]`` of each fact's answer, by hand."""
    return [[-logq[a] for a in model.encode(f.question, f.answer)[1]] for f in facts]


def _mean(xs) -> float:
    return sum(xs) / len(xs)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def toy() -> tt.core.TracedModel:
    return _toy()


# ---------------------------------------------------------------------------------------
# the losses as pure functions
# ---------------------------------------------------------------------------------------


def test_masked_diffusion_nll_by_hand():
    """(1/L) Σ_masked −log p / t on a known distribution and a given mask and ratio."""
    probs = torch.tensor([[0.5, 0.25, 0.125, 0.125]]).expand(3, -1)  # [L=3, V=4]
    logits = probs.log()[None]  # [1, 3, 4]
    answers = torch.tensor([[0, 1, 2]])
    mask = torch.tensor([[True, False, True]])
    t = torch.tensor([0.5])
    got = masked_diffusion_nll(logits, answers, mask, t)
    want = (math.log(2) + math.log(8)) / 0.5 / 3
    assert got.shape == (1,) and abs(float(got) - want) < 1e-6


def test_masked_diffusion_nll_is_unbiased_for_the_token_mean():
    """Over the mask draws, E[ℓ] equals the mean per-token cross-entropy (E[1{masked}/t] = 1)."""
    g = torch.Generator().manual_seed(0)
    n, length = 20000, 5
    logits = torch.randn(1, length, 7, generator=g).expand(n, -1, -1)
    answers = torch.randint(0, 7, (1, length), generator=g).expand(n, -1)
    t, mask = draw_answer_masks(n, length, g, eps=0.05)
    est = masked_diffusion_nll(logits, answers, mask, t).mean()
    exact = (-torch.log_softmax(logits[0], -1).gather(-1, answers[0, :, None])).mean()
    assert abs(float(est) - float(exact)) < 0.05 * float(exact)


def test_draw_answer_masks_seeded_and_bounded():
    """The same seed gives the same draw; t lies in [eps, 1]; masking follows t."""
    a = draw_answer_masks(50, 8, torch.Generator().manual_seed(3), eps=0.2)
    b = draw_answer_masks(50, 8, torch.Generator().manual_seed(3), eps=0.2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert float(a[0].min()) >= 0.2 and float(a[0].max()) <= 1.0
    assert a[1].shape == (50, 8) and a[1].dtype == torch.bool


def test_npo_simnpo_rmu_losses_by_hand():
    """NPO, SimNPO and RMU's forget losses equal their formulas on hand-picked numbers."""
    nll, ref = torch.tensor([2.0, 5.0]), torch.tensor([1.0, 5.0])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    want = _mean([-2 / 0.1 * math.log(sig(0.1 * 1.0)), -2 / 0.1 * math.log(sig(0.0))])
    assert abs(float(npo_loss(nll, ref, beta=0.1)) - want) < 1e-5
    lengths = torch.tensor([4.0, 2.0])
    want = _mean([-2 / 4.5 * math.log(sig(4.5 * (0.5 - 0.1))), -2 / 4.5 * math.log(sig(4.5 * 2.4))])
    assert abs(float(simnpo_loss(nll, lengths, beta=4.5, delta=0.1)) - want) < 1e-6
    acts = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    target = torch.tensor([1.0, 0.0])
    want = _mean([_mean([0.0, 4.0]), _mean([4.0, 16.0])])
    assert abs(float(rmu_loss(acts, target)) - want) < 1e-6


# ---------------------------------------------------------------------------------------
# each method's loss on a toy model with a known answer distribution
# ---------------------------------------------------------------------------------------


def test_toy_model_is_constant(toy):
    """The toy's next-token distribution is the same at every position (so losses are by hand)."""
    assert len(_toy_logq(toy)) == R.VOCAB


@pytest.mark.parametrize("method", ["ga", "gd", "npo", "simnpo", "rmu"])
def test_first_step_loss_by_hand(toy, method):
    """Step 1's loss equals the method's formula computed by hand from the toy's distribution."""
    logq = _toy_logq(toy)
    f_ce, r_ce = _answer_ces(toy, FORGET, logq), _answer_ces(toy, RETAIN, logq)
    f_tok = [_mean(c) for c in f_ce]  # diffusion loss with every token masked and t = 1
    r_tok = _mean([_mean(c) for c in r_ce])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    if method == "ga":
        want = -_mean(f_tok)
    elif method == "gd":
        want = -_mean(f_tok) + r_tok
    elif method == "npo":
        want = 2 / 0.1 * math.log(2) + r_tok  # NLL = NLL_ref at step 1
    elif method == "simnpo":
        want = (
            0.125 * _mean([-2 / 4.5 * math.log(sig(4.5 * sum(c) / len(c))) for c in f_ce]) + r_tok
        )
    else:
        want = 1.0  # ‖h − 0·u‖² / d with h = ones; the retain term is 0 at step 1
    _, log = tt.unlearn(
        toy, FORGET, RETAIN, method=method, steps=1, batch_size=8, lr=1e-3,
        eps=ALMOST_ONE, rmu_steering=0.0, rmu_layer=1, progress=False,
    )  # fmt: skip
    assert abs(log.loss[0] - want) < 1e-5 * max(1.0, abs(want)), (log.loss[0], want)


@pytest.mark.parametrize("family", ["tiny-mdlm", "llada", "dream", "llama"])
def test_differentiable_logprob_equals_answer_logprob(replicas, family):
    """The loss's likelihood estimators equal tt.answer_logprob (masked and elbo), with grads."""
    model = replicas[family]
    facts = FORGET + RETAIN
    for estimator, mc in (("masked", 1), ("elbo", 6)):
        want = tt.answer_logprob(model, facts, estimator=estimator, mc=mc, seed=5)
        got = differentiable_logprob(model, facts, estimator=estimator, mc=mc, seed=5)
        assert got.requires_grad
        assert torch.allclose(got.detach(), want, atol=1e-4, rtol=1e-5), (estimator, got, want)


# ---------------------------------------------------------------------------------------
# runs on replicas
# ---------------------------------------------------------------------------------------


def test_gradient_ascent_raises_the_forget_loss(mdlm):
    """A few GA steps raise the forget set's diffusion loss and lower its ForgetLP."""
    new, log = tt.unlearn(mdlm, FORGET, RETAIN, method="ga", eps=ALMOST_ONE, **FAST)
    assert -log.forget_loss[-1] > -log.forget_loss[0] + 0.1
    assert log.forget_lp[-1] < log.forget_lp[0] - 0.1
    assert log.delta_forget_lp < -0.1
    after = tt.answer_logprob(new, FORGET).mean()
    assert abs(float(after) - log.forget_lp[-1]) < 1e-5


@pytest.mark.parametrize("lora", [None, {"r": 2, "alpha": 4}])
@pytest.mark.parametrize("method", METHODS)
def test_base_weights_bit_identical(mdlm, method, lora):
    """The base model's weights and requires_grad flags are unchanged by any run."""
    before = _state(mdlm._module)
    flags = [p.requires_grad for p in mdlm._module.parameters()]
    new, log = tt.unlearn(
        mdlm, FORGET, RETAIN, method=method, lora=lora, rmu_steering=5.0, rmu_alpha=1.0, **FAST
    )
    assert _same_state(before, _state(mdlm._module))
    assert flags == [p.requires_grad for p in mdlm._module.parameters()]
    assert new is not mdlm and new._module is not mdlm._module
    assert log.steps_run == 3 and log.trainable_parameters > 0
    assert log.forget_lp[-1] != log.forget_lp[0]  # the copy did move


@pytest.mark.parametrize("method", ["gd", "rmu"])
def test_same_seed_same_weights(mdlm, method):
    """Full fine-tuning: the same seed gives bit-identical weights; another seed does not."""
    runs = []
    for global_seed, seed in ((1, 0), (2, 0), (3, 1)):
        torch.manual_seed(global_seed)  # the run's seed, not the global RNG, decides
        kw = dict(method=method, seed=seed, rmu_steering=5.0, rmu_alpha=1.0)
        runs.append(tt.unlearn(mdlm, FORGET, RETAIN, **kw, **FAST)[0])
    a, b, c = (_state(m._module) for m in runs)
    assert _same_state(a, b)
    assert not _same_state(a, c)


def test_same_seed_same_adapter(mdlm):
    """LoRA: the same seed gives the same adapter tensors; another seed a different adapter."""
    kw = dict(method="npo", lora={"r": 2, "alpha": 4}, **FAST)
    runs = []
    for global_seed, seed in ((1, 0), (2, 0), (3, 1)):
        torch.manual_seed(global_seed)  # the run's seed, not the global RNG, decides
        runs.append(tt.unlearn(mdlm, FORGET, RETAIN, seed=seed, **kw)[0])
    a, b, c = (adapter_state_dict(m) for m in runs)
    assert a and _same_state(a, b) and not _same_state(a, c)
    with pytest.raises(tt.UnlearningError, match="no LoRA adapter"):
        adapter_state_dict(mdlm)


def test_lora_model_is_usable_and_starts_at_base(mdlm):
    """A LoRA run returns a traced model the package's functions accept; step 0 equals the base."""
    new, log = tt.unlearn(mdlm, FORGET, RETAIN, method="ga", lora={"r": 2}, **FAST)
    base = float(tt.answer_logprob(mdlm, FORGET).mean())
    assert abs(log.forget_lp[0] - base) < 1e-6
    assert isinstance(new, tt.core.TracedModel) and new.name.endswith("+ga")
    assert log.trainable_parameters < sum(p.numel() for p in mdlm._module.parameters())


def test_early_stopping_fires_on_retain_drift(mdlm):
    """Converged GA stops when RetainLP drifts past the threshold and returns the last good state."""
    new, log = tt.unlearn(
        mdlm, FORGET, RETAIN, method="ga", converged=True, max_retain_drift=0.05,
        eval_every=1, steps=30, lr=5e-2, batch_size=4, progress=False,
    )  # fmt: skip
    assert log.stopped_early and log.steps_run < 30
    assert abs(log.retain_lp[-1] - log.retain_lp[0]) > 0.05
    assert log.returned_step == log.eval_steps[-2]
    returned = float(tt.answer_logprob(new, RETAIN).mean())
    assert abs(returned - log.retain_lp[0]) <= 0.05
    assert abs(returned - log.retain_lp[log.eval_steps.index(log.returned_step)]) < 1e-5


def test_early_stopping_does_not_fire_under_threshold(mdlm):
    """With a loose threshold the converged run goes to the end."""
    _, log = tt.unlearn(
        mdlm, FORGET, RETAIN, method="gd", converged=True, max_retain_drift=1e6, eval_every=1,
        **FAST,
    )  # fmt: skip
    assert not log.stopped_early and log.returned_step == log.steps_run == 3
    assert log.eval_steps == (0, 1, 2, 3)


def test_ar_objective_on_a_causal_model(replicas):
    """objective='ar' trains a causal LM with the teacher-forced loss."""
    model = replicas["llama"]
    new, log = tt.unlearn(model, FORGET, RETAIN, method="ga", objective="ar", **FAST)
    assert log.forget_lp[-1] < log.forget_lp[0]


def test_log_and_config_round_trip(mdlm, tmp_path):
    """UnlearnLog and UnlearnConfig save/load through the one serialiser exactly (NaN retain
    terms included); JSON files of the earlier format still load; a foreign or corrupt file is
    a ResultFileError naming the problem."""
    _, log = tt.unlearn(mdlm, FORGET, RETAIN, method="ga", lora={"r": 2}, **FAST)
    assert math.isnan(log.retain_loss[0])
    path = log.save(tmp_path / "log.safetensors")
    loaded = tt.UnlearnLog.load(path)
    assert loaded.to_dict() == log.to_dict()
    assert all(
        a == b or (math.isnan(a) and math.isnan(b))
        for name in ("loss", "forget_loss", "retain_loss", "forget_lp", "retain_lp")
        for a, b in zip(getattr(loaded, name), getattr(log, name), strict=True)
    )
    assert (loaded.wall_seconds, loaded.device) == (log.wall_seconds, log.device)
    old = tmp_path / "old_log.json"  # the layout the earlier writer produced
    old.write_text(json.dumps(log.to_dict(), indent=1, allow_nan=False))
    assert tt.UnlearnLog.load(old).to_dict() == log.to_dict()
    old_cfg = tmp_path / "old_cfg.json"
    old_cfg.write_text(
        json.dumps({"format": "tie_tracing.UnlearnConfig/1", **log.config.to_dict()})
    )
    assert tt.UnlearnConfig.load(old_cfg) == log.config
    with pytest.raises(ResultFileError, match="holds an UnlearnLog, not an UnlearnConfig"):
        tt.UnlearnConfig.load(path)
    (tmp_path / "junk.safetensors").write_bytes(path.read_bytes()[:40])
    with pytest.raises(ResultFileError, match="truncated or corrupt"):
        tt.UnlearnLog.load(tmp_path / "junk.safetensors")
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ResultFileError, match="is a JSON file"):
        tt.UnlearnLog.load(tmp_path / "other.json")
    assert loaded.config == log.config and loaded.config.lora == tt.LoraSpec(r=2)
    assert loaded.values.shape == (3,) and loaded.dims == ("step",)
    assert log.peak_memory_bytes > 0 and log.wall_seconds > log.eval_seconds > 0
    assert "method='ga'" in repr(log)
    cfg = tt.UnlearnConfig.load(log.config.save(tmp_path / "cfg.safetensors"))
    assert cfg == log.config
    _, again = tt.unlearn(mdlm, FORGET, RETAIN, progress=False, **cfg.to_dict())
    assert again.loss == log.loss


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------


def test_overlap_names_the_shared_ids(mdlm):
    """Forget and retain sharing facts: the error names the shared ids."""
    with pytest.raises(tt.UnlearningError, match=r"share 1 fact.*'kess'"):
        tt.unlearn(mdlm, FORGET, RETAIN + [FORGET[1]], **FAST)


def test_monitor_must_not_hold_forget_facts(mdlm):
    """The RetainLP monitor set cannot contain facts being forgotten (named)."""
    with pytest.raises(tt.UnlearningError, match="monitor set holds forget facts.*'ada'"):
        tt.unlearn(mdlm, FORGET, RETAIN, monitor=RETAIN + FORGET[:1], **FAST)


@pytest.mark.parametrize("which", ["forget", "retain"])
def test_empty_sets(mdlm, which):
    """An empty forget or retain set is refused."""
    sets = {"forget": FORGET, "retain": RETAIN, which: []}
    with pytest.raises(tt.UnlearningError, match=f"{which} set is empty"):
        tt.unlearn(mdlm, sets["forget"], sets["retain"], **FAST)


@pytest.mark.parametrize("lr", [0.0, -1e-4, float("nan")])
def test_bad_learning_rate(mdlm, lr):
    """A learning rate ≤ 0 (or not finite) is refused."""
    with pytest.raises(ValueError, match="lr must be"):
        tt.unlearn(mdlm, FORGET, RETAIN, method="ga", lr=lr, steps=1, progress=False)


def test_unknown_method_lists_them(mdlm):
    """An unknown method's error lists the known ones."""
    with pytest.raises(
        ValueError, match=r"unknown method 'dpo'.*'ga', 'gd', 'npo', 'simnpo', 'rmu'"
    ):
        tt.unlearn(mdlm, FORGET, RETAIN, method="dpo", **FAST)


def test_causal_model_with_diffusion_loss(replicas):
    """A causal model with the diffusion objective: a clear error pointing to objective='ar'."""
    with pytest.raises(tt.UnlearningError, match="causal.*objective='ar'"):
        tt.unlearn(replicas["gpt2"], FORGET, RETAIN, method="ga", **FAST)


def test_mdlm_with_ar_loss(mdlm):
    """An MDLM with objective='ar' is refused (its visible positions are untrained)."""
    with pytest.raises(tt.UnlearningError, match="needs a causal model"):
        tt.unlearn(mdlm, FORGET, RETAIN, objective="ar", **FAST)


def test_bad_config_fields():
    """Config fields out of range, unknown LoRA options and RMU layers are refused."""
    with pytest.raises(ValueError, match="steps"):
        tt.UnlearnConfig(steps=0)
    with pytest.raises(ValueError, match="unknown lora option"):
        tt.UnlearnConfig(lora={"rank": 4})
    with pytest.raises(ValueError, match="unknown estimator"):
        tt.UnlearnConfig(estimator="exact")
    assert tt.UnlearnConfig(lora={"r": 4}).lora == tt.LoraSpec(r=4)


def test_rmu_layer_out_of_range(mdlm):
    """An RMU layer beyond the model's depth is refused before any work."""
    with pytest.raises(tt.UnlearningError, match="rmu_layer 9"):
        tt.unlearn(mdlm, FORGET, RETAIN, method="rmu", rmu_layer=9, **FAST)
