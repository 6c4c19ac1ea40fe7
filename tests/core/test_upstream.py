"""Parity with the real upstream code: tiny random-weight LLaDA, Dream and DiffuLLaMA
checkpoints built from the upstream modelling files, loaded through ``tt.load_model``.

The references are upstream's own files (``../shared/realcode``, see ``upstream_checkpoints``),
never replicas: the model of each reference is the upstream class built directly and given the
checkpoint's weights with ``load_state_dict`` (no ``from_pretrained``, so none of the package's
load-time fixes), its forward called as upstream's inference calls it, and its samplers are
``generate.py``'s ``generate`` and Dream's ``DreamGenerationMixin._sample``. Random draws are
injected: upstream's ``torch.rand`` / ``rand_like`` / ``multinomial`` / ``Categorical`` calls
get the keyed draws the package's samplers use (``step_noise_generator(seed, step, stream)``
over the answer span), laid out as upstream asks for them (Gumbel-max for a categorical draw,
Gumbel-top-k for sampling without replacement). Without ``../shared`` the module skips.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
import warnings

import pytest
import torch
import upstream_checkpoints as U

import tie_tracing as tt
from tie_tracing.core.commit import step_noise_generator
from tie_tracing.core.samplers import DreamSampler, LLaDASampler

CODE = U.realcode_dir()
if CODE is None:
    pytest.skip(U.MISSING, allow_module_level=True)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PROMPTS = ["where was ada vell born", "when was mara tov born"]
GEN = 8


# -- the upstream side ---------------------------------------------------------------------


def _package(name: str, folder, files: list[str]):
    """Import upstream files as one package (their relative imports resolve to each other)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_loader(name, loader=None, is_package=True)
    assert spec is not None
    pkg = importlib.util.module_from_spec(spec)
    pkg.__path__ = [str(folder)]
    sys.modules[name] = pkg
    for file in files:
        sub = importlib.util.spec_from_file_location(f"{name}.{file}", folder / f"{file}.py")
        assert sub is not None and sub.loader is not None
        module = importlib.util.module_from_spec(sub)
        sys.modules[f"{name}.{file}"] = module
        sub.loader.exec_module(module)
        setattr(pkg, file, module)
    return pkg


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _cast(model, dtype):
    """The weights in ``dtype``, buffers as the code computed them — what ``from_pretrained``
    with a dtype gives (a rotary ``inv_freq`` stays float32), unlike ``model.to(dtype)``."""
    for param in model.parameters():
        param.data = param.data.to(dtype)
    return model.eval()


def _config_json(path) -> dict:
    import json

    return json.loads((path / "config.json").read_text())


def reference_llada(path, dtype):
    pkg = _package("_ref_llada", CODE / "llada", ["configuration_llada", "modeling_llada"])
    config = pkg.configuration_llada.LLaDAConfig(**_config_json(path))
    if not hasattr(config, "use_cache"):  # generate.py's model(x) reads it
        config.use_cache = False
    model = pkg.modeling_llada.LLaDAModelLM(config, init_params=False)
    model.load_state_dict(_weights(path), strict=True)
    return _cast(model, dtype)


def _default_rope(config, device=None, seq_len=None, **kwargs):
    """transformers 4's default rope parameters (5.x dropped the entry Dream looks up)."""
    dim = config.hidden_size // config.num_attention_heads
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2).float().to(device) / dim))
    return inv_freq, 1.0


def reference_dream(path, dtype):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    added = "default" not in ROPE_INIT_FUNCTIONS
    if added:
        ROPE_INIT_FUNCTIONS["default"] = _default_rope
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pkg = _package(
                "_ref_dream",
                CODE / "dream",
                ["configuration_dream", "generation_utils", "modeling_dream"],
            )
            config = pkg.configuration_dream.DreamConfig(**_config_json(path))
            model = pkg.modeling_dream.DreamModel(config)
    finally:
        if added:
            ROPE_INIT_FUNCTIONS.pop("default", None)
    model.load_state_dict(_weights(path), strict=True)
    return _cast(model, dtype), pkg


def reference_diffullama(path, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**_config_json(path)))
    model.load_state_dict(_weights(path), strict=True)
    return _cast(model, dtype)


def upstream_logits(family: str, ref, x: torch.Tensor) -> torch.Tensor:
    """The forward as upstream's inference calls it, aligned so index i scores token i."""
    with torch.no_grad():
        if family == "llada":  # generate.py: model(x).logits
            return ref(x).logits
        if family == "dream":  # _sample: self(x, "full", None).logits, then shifted
            logits = ref(x, "full", None).logits
        else:  # DiffuLLaMA: a 4-D all-zero attention mask, shifted logits
            n = x.shape[1]
            mask = torch.zeros(x.shape[0], 1, n, n, dtype=ref.model.embed_tokens.weight.dtype)
            logits = ref(input_ids=x, attention_mask=mask).logits
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("upstream")
    return {
        "llada": U.build_llada(root / "llada"),
        "dream": U.build_dream(root / "dream"),
        "diffullama": U.build_diffullama(root / "diffullama"),
    }


@pytest.fixture(scope="module")
def loaded(dirs):
    """``(family, dtype) → TracedModel`` through tt.load_model, cached."""
    cache: dict = {}

    def get(family: str, dtype: str):
        if (family, dtype) not in cache:
            cache[family, dtype] = tt.load_model(
                dirs[family],
                trust_remote_code=True,
                family="diffullama" if family == "diffullama" else None,
                dtype=DTYPES[dtype],
                progress=False,
            )
        return cache[family, dtype]

    return get


@pytest.fixture(scope="module")
def references(dirs):
    cache: dict = {}

    def get(family: str, dtype: str):
        if (family, dtype) not in cache:
            build = {
                "llada": reference_llada,
                "dream": lambda p, d: reference_dream(p, d)[0],
                "diffullama": reference_diffullama,
            }[family]
            cache[family, dtype] = build(dirs[family], DTYPES[dtype])
        return cache[family, dtype]

    return get


def prompt_ids(model) -> torch.Tensor:
    ids = [model.tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    assert len({len(i) for i in ids}) == 1
    return torch.tensor(ids)


def query(model) -> tuple[torch.Tensor, int]:
    prompt = prompt_ids(model)
    masks = torch.full((prompt.shape[0], GEN), model.mask_token_id)
    return torch.cat([prompt, masks], 1), prompt.shape[1]


# -- loading and forwards ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("family", ["llada", "dream", "diffullama"])
def test_logits_equal_upstream_forward(loaded, references, family, dtype):
    """tt.load_model's forward gives, bit for bit, the logits of upstream's own forward as
    upstream's inference calls it (Dream: the rope buffer repaired; DiffuLLaMA: bidirectional)."""
    model = loaded(family, dtype)
    x, _ = query(model)
    with torch.no_grad():
        ours = model.logits(x)
    ref = upstream_logits(family, references(family, dtype), x)
    assert ours.dtype == DTYPES[dtype]
    assert torch.equal(ours, ref)
    assert model.info["compat_fixes"] is not None


def test_diffullama_runs_bidirectionally(loaded):
    """Called with input ids alone, the Llama classes are causal; the diffullama family passes
    the full mask, so the last token reaches the first prediction."""
    model = loaded("diffullama", "float32")
    x, _ = query(model)
    y = x.clone()
    y[:, -1] = 5
    with torch.no_grad():
        a, b = model.logits(x), model.logits(y)
        plain_a = model._module(input_ids=x).logits
        plain_b = model._module(input_ids=y).logits
    assert not torch.equal(a[:, 1], b[:, 1])  # aligned index 1 is raw position 0
    assert torch.equal(plain_a[:, 0], plain_b[:, 0])  # what a causal forward would give


def test_check_passes_on_every_upstream_checkpoint(loaded):
    from tie_tracing.core.check import check_model

    for family in ("llada", "dream", "diffullama"):
        report = check_model(loaded(family, "bfloat16"))
        assert report.ok, str(report)
        assert {f.check for f in report.findings if f.ok} == set(tt.core.check.CHECKS)


def test_mmada_layout_on_llada_code(dirs):
    """MMaDA's table entry (LLaDA's layout and mask id) resolves on LLaDA's real module tree.
    (MMaDA's own modelling code is not among the upstream files; this checks the layout only.)"""
    model = tt.load_model(dirs["llada"], family="mmada", trust_remote_code=True, progress=False)
    assert model.backbone.family == "mmada" and model.mask_token_id == 126336
    x, _ = query(model)
    assert model.logits(x).shape[-1] == 126464


# -- LLaDA's generate.py -------------------------------------------------------------------


class Draws:
    """The package's keyed draws, handed to upstream's random calls.

    ``step`` advances with each forward of the reference model (a pre-hook); ``x`` is the
    forward's input (its first ``rows`` rows under CFG)."""

    def __init__(self, seeds, prompt_len, mask_id, precision="float32"):
        self.seeds, self.p, self.mask_id, self.precision = (
            list(seeds),
            prompt_len,
            mask_id,
            precision,
        )
        self.step, self.x, self.inputs = -1, None, []
        self.p_transfer = None

    def hook(self, _module, args, kwargs):
        x = args[0] if args else kwargs["input_ids"]
        self.step += 1
        self.x = x[: len(self.seeds)].clone()
        self.inputs.append(self.x)

    def keyed(self, r, stream, shape, dtype=torch.float32):
        gen = step_noise_generator(self.seeds[r], self.step, stream)
        return torch.rand(shape, generator=gen, dtype=dtype)

    def positions(self):
        return (self.x == self.mask_id).nonzero().tolist()


class LLaDATorch(types.SimpleNamespace):
    """``torch`` as generate.py sees it: rand_like (Gumbel) and rand (random remasking) keyed."""

    def __init__(self, draws: Draws):
        super().__init__()
        self._draws = draws

    def __getattr__(self, name):
        return getattr(torch, name)

    def rand_like(self, t, dtype=None, **_):
        d = self._draws
        u = torch.full(t.shape, 0.5, dtype=torch.float64)
        kind = torch.float64 if d.precision == "model" else torch.float32
        for r in range(t.shape[0]):
            u[r, d.p :] = d.keyed(r, 0, (t.shape[1] - d.p, t.shape[2]), kind).double()
        return u

    def rand(self, shape, device=None, **_):
        d = self._draws
        u = torch.zeros(shape)
        for r in range(shape[0]):
            u[r, d.p :] = d.keyed(r, 1, (shape[1] - d.p,))
        return u


def run_generate(ref, x, p, *, steps, seeds, precision, **kw):
    """generate.py on the reference model with keyed draws: states after each step."""
    gen = importlib.util.spec_from_file_location(
        "_ref_llada_generate", CODE / "llada" / "generate.py"
    )
    assert gen is not None and gen.loader is not None
    module = importlib.util.module_from_spec(gen)
    gen.loader.exec_module(module)
    draws = Draws(seeds, p, 126336, precision)
    module.torch = LLaDATorch(draws)
    handle = ref.register_forward_pre_hook(draws.hook, with_kwargs=True)
    prompt = x[:, :p]
    try:  # generate.py's CFG branch needs the attention mask its main() passes (all ones here)
        final = module.generate(
            ref, prompt, torch.ones_like(prompt), steps=steps, gen_length=x.shape[1] - p, **kw
        )
    finally:
        handle.remove()
    return torch.stack(draws.inputs[1:] + [final], 1)


LLADA_GRID = {
    "low_confidence": dict(),
    "random": dict(remasking="random"),
    "blocks": dict(block_length=4),
    "random-blocks": dict(remasking="random", block_length=2),
    "cfg": dict(cfg_scale=0.5),
    "eos": dict(logits_eos_inf=True),
    "eos-eot-confidence": dict(confidence_eos_eot_inf=True),
    "eos-both-blocks": dict(logits_eos_inf=True, confidence_eos_eot_inf=True, block_length=4),
    "temperature": dict(temperature=0.7),
    "temperature-cfg-blocks": dict(temperature=1.2, cfg_scale=0.5, block_length=4),
}
FAST_LLADA = ("low_confidence", "random", "eos-eot-confidence", "temperature")


def llada_parity(loaded, references, case, dtype, precision, steps=8):
    model, ref = loaded("llada", dtype), references("llada", dtype)
    x, p = query(model)
    kw = LLADA_GRID[case]
    seeds = [3, 4]
    sampler = LLaDASampler(**kw, precision=precision, commit_mask=True)
    ours = model.denoise(x, answer_start=p, steps=steps, sampler=sampler, seeds=seeds).states
    up_kw = {k: v for k, v in kw.items()}
    up_kw["block_length"] = kw.get("block_length", GEN)
    theirs = run_generate(ref, x, p, steps=steps, seeds=seeds, precision=precision, **up_kw)
    return ours, theirs


def first_difference(ours, theirs) -> int | None:
    for k in range(ours.shape[1]):
        if not torch.equal(ours[:, k], theirs[:, k]):
            return k
    return None


def _llada_cases():
    out = []
    for case in LLADA_GRID:
        for dtype, precision in (
            ("float32", "float32"),
            ("float32", "model"),
            ("bfloat16", "model"),
        ):
            slow = case not in FAST_LLADA or (dtype, precision) == ("float32", "model")
            marks = [pytest.mark.slow] if slow else []
            out.append(
                pytest.param(case, dtype, precision, marks=marks, id=f"{case}-{dtype}-{precision}")
            )
    return out


@pytest.mark.parametrize("case, dtype, precision", _llada_cases())
def test_llada_sampler_equals_generate_py(loaded, references, case, dtype, precision):
    """tt's LLaDASampler commits, step by step and token for token, what generate.py commits on
    the same checkpoint with the same draws (commit_mask=True: upstream commits the mask token;
    bfloat16 needs precision='model', upstream's dtype)."""
    ours, theirs = llada_parity(loaded, references, case, dtype, precision)
    assert first_difference(ours, theirs) is None
    assert (theirs[:, -1] != theirs[:, 0]).any()  # the run did commit something


# -- Dream's _sample -----------------------------------------------------------------------


class DreamTorch(LLaDATorch):
    """``torch`` as generation_utils.py sees it: rand (origin) and multinomial (alg_temp)."""

    def rand(self, *shape, device=None, **_):
        d = self._draws
        pos = d.positions()
        u = torch.tensor([float(d.keyed(r, 1, (d.x.shape[1] - d.p,))[j - d.p]) for r, j in pos])
        d.last_rand = u
        return u

    def multinomial(self, weights, num_samples, **_):
        d = self._draws
        g = torch.zeros(weights.shape)
        for r in range(weights.shape[0]):
            u = d.keyed(r, 2, (weights.shape[1] - d.p,))
            g[r, d.p :] = -torch.log(-torch.log(u.clamp_min(1e-20)))
        return torch.topk(torch.log(weights.float()) + g, num_samples).indices


class DreamDists(types.SimpleNamespace):
    """``torch.distributions`` as generation_utils.py sees it: Categorical draws by Gumbel-max
    on keyed stream-0 noise of the positions the probabilities belong to."""

    def __init__(self, draws: Draws, steps: int, eps: float, alg: str):
        super().__init__()
        draws_ = draws
        grid = torch.linspace(1, eps, steps + 1)

        class Categorical:
            def __init__(self, probs):
                self.probs = probs

            def sample(self):
                pos = draws_.positions()
                if alg == "origin":
                    i = draws_.step
                    p_transfer = 1 - grid[i + 1] / grid[i] if i < steps - 1 else 1
                    keep = (draws_.last_rand < p_transfer).tolist()
                    pos = [q for q, k in zip(pos, keep) if k]
                assert len(pos) == self.probs.shape[0]
                if not pos:
                    return torch.zeros(0, dtype=torch.long)
                vocab = self.probs.shape[-1]
                g = torch.stack(
                    [
                        -torch.log(-torch.log(draws_.keyed(r, 0, (draws_.x.shape[1] - draws_.p, vocab))[j - draws_.p].clamp_min(1e-20)))
                        for r, j in pos
                    ]
                )  # fmt: skip
                return (torch.log(self.probs.float()) + g).argmax(-1)

        self.Categorical = Categorical


def run_sample(ref, pkg, x, p, *, steps, seeds, alg, eps=1e-3, **kw):
    """Dream's _sample on the reference model with keyed draws: states after each step."""
    gen = pkg.generation_utils
    draws = Draws(seeds, p, 151666)
    saved = gen.torch, gen.dists
    gen.torch, gen.dists = DreamTorch(draws), DreamDists(draws, steps, eps, alg)
    states = []
    config = gen.DreamGenerationConfig(
        steps=steps, eps=eps, alg=alg, mask_token_id=151666, max_length=x.shape[1], **kw
    )
    handle = ref.register_forward_pre_hook(draws.hook, with_kwargs=True)
    try:
        ref._sample(
            x[:, :p],
            attention_mask=None,
            generation_config=config,
            generation_tokens_hook_func=lambda i, y, logits: (
                (states.append(y.clone()) if i is not None else None) or y
            ),
            generation_logits_hook_func=lambda i, y, logits: logits,
        )
    finally:
        handle.remove()
        gen.torch, gen.dists = saved
    return torch.stack(states, 1)


DREAM_GRID = {
    "origin": dict(alg="origin"),
    "maskgit_plus": dict(alg="maskgit_plus"),
    "topk_margin": dict(alg="topk_margin"),
    "entropy": dict(alg="entropy"),
    "entropy-alg_temp": dict(alg="entropy", alg_temp=0.5),
    "maskgit-top_p": dict(alg="maskgit_plus", top_p=0.5),
    "margin-top_k": dict(alg="topk_margin", top_k=3),
    "sampled-top_p": dict(alg="maskgit_plus", temperature=0.8, top_p=0.9),
    "sampled-top_k-alg_temp": dict(alg="entropy", temperature=1.1, top_k=5, alg_temp=0.3),
    "origin-sampled": dict(alg="origin", temperature=0.9),
}
FAST_DREAM = ("origin", "topk_margin", "entropy-alg_temp", "sampled-top_p")


def dream_parity(loaded, dirs, case, dtype, precision, steps=6):
    model = loaded("dream", dtype)
    ref, pkg = _dream_reference(dirs, dtype)
    x, p = query(model)
    kw = DREAM_GRID[case]
    seeds = [5, 6]
    # per row: with the mask token committed, a batch's rows hold different masked counts, and
    # _sample's batch-mean count then makes its top-k take -inf positions of the row with fewer
    # masks and write the mask id over committed tokens (a re-mask the package never does)
    sampler = DreamSampler(**kw, precision=precision, commit_mask=True)
    ours = model.denoise(x, answer_start=p, steps=steps, sampler=sampler, seeds=seeds).states
    theirs = torch.cat(
        [
            run_sample(ref, pkg, x[r : r + 1], p, steps=steps, seeds=seeds[r : r + 1], **kw)
            for r in range(len(seeds))
        ]
    )
    return ours, theirs


_DREAM_REFS: dict = {}


def _dream_reference(dirs, dtype):
    if dtype not in _DREAM_REFS:
        _DREAM_REFS[dtype] = reference_dream(dirs["dream"], DTYPES[dtype])
    return _DREAM_REFS[dtype]


def _dream_cases():
    out = []
    for case in DREAM_GRID:
        for dtype, precision in (
            ("float32", "float32"),
            ("float32", "model"),
            ("bfloat16", "model"),
        ):
            slow = case not in FAST_DREAM or (dtype, precision) == ("float32", "model")
            marks = [pytest.mark.slow] if slow else []
            out.append(
                pytest.param(case, dtype, precision, marks=marks, id=f"{case}-{dtype}-{precision}")
            )
    return out


@pytest.mark.parametrize("case, dtype, precision", _dream_cases())
def test_dream_sampler_equals_dream_sample(loaded, dirs, case, dtype, precision):
    """tt's DreamSampler commits, step by step and token for token, what
    DreamGenerationMixin._sample commits on each row with the same draws (commit_mask=True:
    upstream commits the mask token; bfloat16 needs precision='model')."""
    ours, theirs = dream_parity(loaded, dirs, case, dtype, precision)
    assert first_difference(ours, theirs) is None
    assert (theirs[:, -1] != theirs[:, 0]).any()


# -- ties ----------------------------------------------------------------------------------


class _Flat(torch.nn.Module):
    """A stand-in forward whose logits are the same at every position: every masked position
    has exactly the same confidence, so the order of commits is decided by tie-breaking alone."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        self.row = torch.randn(vocab, generator=torch.Generator().manual_seed(seed))
        self.row[-1] = -10.0  # the mask token (the last id) never wins
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return self.anchor.device

    def forward(self, x, attention_mask=None, tok_idx=None, **_):
        return types.SimpleNamespace(logits=self.row.expand(*x.shape, -1).clone())


def _rule_states(rule, x, p, steps, vocab, mask_id, shift=False):
    """A sampler's states over a run on _Flat's logits (the loop of tt's run_loop)."""
    flat = _Flat(vocab)
    states = []
    for k in range(steps):
        logits = flat(x).logits[:, p:]
        x = rule.update(
            x, logits, answer_start=p, step=k, steps=steps, mask_id=mask_id, seeds=[0] * x.shape[0]
        )
        states.append(x)
    return torch.stack(states, 1)


@pytest.mark.parametrize("prompt_len, gen, steps", [(3, 7, 4), (20, 12, 3), (150, 40, 8)])
def test_exact_ties_follow_generate_py(prompt_len, gen, steps):
    """With every confidence equal, generate.py commits in torch.topk's order over the whole
    row (not by position); LLaDASampler commits the same positions at the same steps."""
    vocab, mask_id = 50, 49
    x = torch.cat([torch.arange(prompt_len)[None] % 40, torch.full((1, gen), mask_id)], 1)
    gen_mod = importlib.util.spec_from_file_location(
        "_ref_llada_generate_ties", CODE / "llada" / "generate.py"
    )
    assert gen_mod is not None and gen_mod.loader is not None
    module = importlib.util.module_from_spec(gen_mod)
    gen_mod.loader.exec_module(module)
    flat = _Flat(vocab)
    inputs = []
    flat.register_forward_pre_hook(lambda _m, a: inputs.append(a[0].clone()))
    final = module.generate(
        flat, x[:, :prompt_len], steps=steps, gen_length=gen, block_length=gen, mask_id=mask_id
    )
    theirs = torch.stack(inputs[1:] + [final], 1)
    ours = _rule_states(LLaDASampler(), x, prompt_len, steps, vocab, mask_id)
    assert torch.equal(ours, theirs)


def test_exact_ties_are_not_position_order():
    """The constructed ties do exercise the rule: torch.topk's order differs from position
    order on at least one of the rows above (so a position-order sampler would fail)."""
    row = torch.full((190,), -math.inf)
    row[150:] = 0.5
    assert torch.topk(row, 5).indices.tolist() != list(range(150, 155))


@pytest.mark.parametrize("coupled", [False, True])
def test_exact_ties_follow_dream_sample(dirs, coupled):
    """With every confidence equal, Dream's _sample commits in torch.topk's order over the
    batch's rows; DreamSampler commits the same."""
    _ref, pkg = _dream_reference(dirs, "float32")
    vocab, mask_id, p, gen, steps = 50, 49, 30, 20, 5

    class FlatDream(pkg.generation_utils.DreamGenerationMixin, _Flat):
        pass

    flat = FlatDream(vocab)
    x = torch.cat([torch.arange(p)[None].repeat(2, 1) % 40, torch.full((2, gen), mask_id)], 1)
    rows = [x] if coupled else [x[:1], x[1:]]
    for alg in ("maskgit_plus", "topk_margin", "entropy"):
        for xr in rows:
            states = []
            config = pkg.generation_utils.DreamGenerationConfig(
                steps=steps, alg=alg, mask_token_id=mask_id, max_length=p + gen
            )
            flat._sample(
                xr[:, :p], attention_mask=None, generation_config=config,
                generation_tokens_hook_func=lambda i, y, lg, states=states: (states.append(y.clone()) if i is not None else None) or y,
                generation_logits_hook_func=lambda i, y, lg: lg,
            )  # fmt: skip
            rule = DreamSampler(alg=alg, coupled=coupled)
            ours = _rule_states(rule, xr, p, steps, vocab, mask_id)
            assert torch.equal(ours, torch.stack(states, 1)), alg


# -- tracing and editing on the real code --------------------------------------------------

FACTS = [
    tt.Fact("ada vell", "where was ada vell born", "lisbon porto", id="f0"),
    tt.Fact("mara tov", "who wrote the book of mara tov", "orion lyra", id="f1"),
]


@pytest.mark.parametrize(
    "family, sampler", [("llada", LLaDASampler()), ("dream", DreamSampler(alg="entropy"))]
)
def test_trace_tie_equals_reference(loaded, family, sampler):
    """The batched TIE engine equals the slow hook reference on the real modelling code."""
    from tie_tracing.tracing.reference import reference_ie

    model = loaded(family, "float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = tt.trace_tie(
            model, FACTS[:1], steps=2, nu=2.0, n_noise=1, seed=1, sampler=sampler, progress=False
        )
    ref = reference_ie(model, FACTS[0], steps=2, nu=2.0, n_noise=1, seed=1, sampler=sampler)
    assert torch.equal(torch.isnan(ref["ie"]), torch.isnan(result.ie[0]))
    torch.testing.assert_close(
        torch.nan_to_num(result.ie[0]), torch.nan_to_num(ref["ie"]), atol=1e-4, rtol=0
    )
    assert torch.nan_to_num(result.ie).abs().max() > 0


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_edit_memory_installs_and_removes_exactly(loaded, family):
    model = loaded(family, "float32")
    mem = tt.EditMemory.build(model, FACTS, layer=1, alpha=2.0, lam=0.1, targets=["red", "blue"])
    prompt, answer = model.encode(FACTS[0].question, FACTS[0].answer)
    x = torch.tensor([prompt + [model.mask_token_id] * len(answer)])
    before = model.logits(x)
    states = model.denoise(x, answer_start=len(prompt), steps=2).states
    with mem.install(model):
        assert not torch.equal(model.logits(x), before)
    assert torch.equal(model.logits(x), before)
    assert torch.equal(model.denoise(x, answer_start=len(prompt), steps=2).states, states)


def test_without_the_rotary_fix_the_check_refuses_dream(dirs, monkeypatch):
    """Where transformers leaves Dream's rotary inv_freq unwritten (5.x), loading without the
    rotary fix yields a model the check refuses, naming the buffer (no silent garbage)."""
    from tie_tracing.core import compat

    model = tt.load_model(dirs["dream"], trust_remote_code=True, progress=False, check=False)
    if "rotary_inv_freq" not in model.info["compat_fixes"]:
        pytest.skip("this transformers initialises Dream's rotary buffer itself")
    monkeypatch.setattr(compat, "fix_rotary", lambda module, fixes: None)
    with pytest.raises(tt.CheckpointError, match=r"initialised: .*inv_freq"):
        tt.load_model(dirs["dream"], trust_remote_code=True, progress=False)
