"""The backbone table, site access, logit alignment, family detection and loading."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import replicas as R
import torch
from conftest import ALL_FAMILIES, CAUSAL_FAMILIES, MDLM_FAMILIES
from torch import nn

import tie_tracing as tt
import tie_tracing.core.model as tt_model
from tie_tracing.core.backbones import (
    BACKBONES,
    MODULES,
    check_backbone,
    detect_family,
    get_module,
    hidden_of,
)

X = torch.tensor([[1, 5, 6, 7, 8, 3, 3], [1, 9, 10, 11, 12, 3, 3]])


def raw_logits(model: tt.core.TracedModel, x: torch.Tensor) -> torch.Tensor:
    """Logits of the plain module, as its own forward returns them."""
    with torch.no_grad():
        return model._module(input_ids=x).logits


# -- table ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_check_backbone_resolves_every_site(replicas, family):
    """Every site of every layer resolves to a module, and the layer count is the block count."""
    model = replicas[family]
    b = model.backbone
    n = check_backbone(model._module, b)
    assert n == model.num_layers == 3
    for layer in range(n):
        for m in MODULES:
            assert isinstance(get_module(model._module, b.site_path(layer, m)), nn.Module)
            assert model.site_module(layer, m) is get_module(model._module, b.site_path(layer, m))
    assert isinstance(model.embedding_module(), nn.Embedding)


def test_llada_mlp_is_block_ff_out_not_lm_head(replicas):
    """LLaDA's mlp site is ``blocks[i].ff_out``, never the LM head ``transformer.ff_out``."""
    model = replicas["llada"]
    lm_head = model._module.model.transformer["ff_out"]
    for layer in range(model.num_layers):
        assert (
            model.site_module(layer, "mlp")
            is model._module.model.transformer["blocks"][layer].ff_out
        )
        assert model.site_module(layer, "mlp") is not lm_head


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_site_envoys_read_the_hooked_module(replicas, family):
    """Inside ``model.logits(x)``, ``site(l, m).output`` equals a torch hook's capture on ``site_module(l, m)``."""
    model = replicas[family]
    order = ("attn", "mlp", "resid")  # execution order within a block
    captured: dict = {}

    def make_hook(key):
        def hook(_m, _i, out):
            captured[key] = hidden_of(out).detach().clone()

        return hook

    handles = [
        model.site_module(layer, m).register_forward_hook(make_hook((layer, m)))
        for layer in range(model.num_layers)
        for m in order
    ]
    try:
        saved = {}
        with torch.no_grad(), model.logits(X):
            for layer in range(model.num_layers):
                for m in order:
                    saved[(layer, m)] = model.site(layer, m).output.save()
    finally:
        for h in handles:
            h.remove()
    assert set(captured) == set(saved)
    for key in saved:
        got = hidden_of(saved[key])
        assert got.shape == (2, X.shape[1], model.hidden_size), key
        assert torch.equal(got, captured[key]), key
    # distinct sites hold distinct tensors (the paths are not all the same module)
    assert not torch.equal(hidden_of(saved[(0, "attn")]), hidden_of(saved[(0, "mlp")]))
    assert not torch.equal(hidden_of(saved[(0, "resid")]), hidden_of(saved[(1, "resid")]))


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_embedding_envoy_reads_the_embedding(replicas, family):
    """``model.embedding.output`` is the token embedding table looked up at the input ids."""
    model = replicas[family]
    with torch.no_grad(), model.logits(X):
        emb = model.embedding.output.save()
    assert torch.equal(emb, model.embedding_module().weight[X])


def test_site_rejects_unknown_module_and_layer(mdlm):
    """``site()`` names an unknown module or an out-of-range layer in its error."""
    with pytest.raises(ValueError, match="'ffn'.*resid"):
        mdlm.site(0, "ffn")
    with pytest.raises(ValueError, match=r"layer 3 outside 0\.\.2"):
        mdlm.site(3, "mlp")
    with pytest.raises(ValueError, match="layer -1"):
        mdlm.site_module(-1, "attn")


def test_missing_path_is_named():
    """A model lacking a site's module raises ``UnsupportedModelError`` naming that path."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = nn.Linear(4, 4)  # no mlp

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(8, 4)
            self.layers = nn.ModuleList([Block()])

    root = nn.Module()
    root.model = Inner()
    with pytest.raises(tt.UnsupportedModelError, match=r"model\.layers\.0\.mlp"):
        check_backbone(root, BACKBONES["tiny-mdlm"])
    with pytest.raises(tt.UnsupportedModelError, match=r"model\.transformer\.wte"):
        check_backbone(root, BACKBONES["llada"])


def test_wrapping_with_wrong_family_fails_at_load(replicas):
    """Wrapping a module with another family's layout fails when the wrapper is built."""
    with pytest.raises(tt.UnsupportedModelError, match="llada"):
        R.wrap(R.causal("gpt2"), family="llada")


# -- family detection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, family",
    [
        (SimpleNamespace(model_type="llada"), "llada"),
        (SimpleNamespace(model_type="Dream"), "dream"),
        (SimpleNamespace(model_type="qwen2"), "qwen2"),
        (SimpleNamespace(model_type="gpt2"), "gpt2"),
        (SimpleNamespace(model_type="llama"), "llama"),
        (SimpleNamespace(model_type=None, architectures=["LLaDAModelLM"]), "llada"),
        (SimpleNamespace(model_type="llama", tie_tracing_family="tiny-mdlm"), "tiny-mdlm"),
        (SimpleNamespace(model_type="llama", tie_tracing_family="diffullama"), "diffullama"),
    ],
)
def test_detect_family(config, family):
    """``tie_tracing_family`` wins, then ``model_type``, then ``architectures``."""
    assert detect_family(config) == family


def test_detect_family_unsupported_lists_families():
    """An unsupported config raises ``UnsupportedModelError`` listing every supported family."""
    config = SimpleNamespace(model_type="bert", architectures=["BertModel"])
    with pytest.raises(tt.UnsupportedModelError) as info:
        detect_family(config)
    message = str(info.value)
    assert "bert" in message
    for family in BACKBONES:
        assert family in message
    with pytest.raises(tt.UnsupportedModelError, match="not a known family"):
        detect_family(SimpleNamespace(model_type="llama", tie_tracing_family="nope"))


# -- logit alignment and attention direction ---------------------------------------------


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_logits_alignment(replicas, family):
    """Shifted families (Dream, causal LMs) move the prediction at ``i-1`` to ``i``; LLaDA/tiny-mdlm are raw."""
    model = replicas[family]
    raw = raw_logits(model, X)
    with torch.no_grad():
        aligned = model.forward_logits(X)
        traced = model.logits(X)
    assert aligned.shape == raw.shape
    assert torch.equal(traced, aligned)
    if family in ("dream",) + CAUSAL_FAMILIES:
        assert model.backbone.shifted
        assert torch.equal(aligned[:, 1:], raw[:, :-1])
    else:
        assert not model.backbone.shifted
        assert torch.equal(aligned, raw)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_bidirectionality(replicas, family):
    """MDLM replicas' position-0 output depends on the last token; causal replicas' does not."""
    model = replicas[family]
    other = X.clone()
    other[:, -1] = 20
    a, b = raw_logits(model, X)[:, 0], raw_logits(model, other)[:, 0]
    if family in MDLM_FAMILIES:
        assert not model.is_causal
        assert not torch.allclose(a, b)
    else:
        assert model.is_causal
        assert torch.equal(a, b)


# -- loading -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_mdlm(tmp_path_factory):
    """A tiny-mdlm replica saved with ``save_pretrained`` (model + tokenizer), and its module."""
    path = tmp_path_factory.mktemp("tiny_mdlm_ckpt")
    module = R.tiny_mdlm(seed=3)
    module.save_pretrained(path)
    R.make_tokenizer().save_pretrained(path)
    return path, module


def test_load_model_round_trip(saved_mdlm):
    """A ``save_pretrained`` directory loads offline as tiny-mdlm with identical logits."""
    path, module = saved_mdlm
    model = tt.load_model(path)
    assert model.backbone.family == "tiny-mdlm"
    assert model.mask_token_id == 3
    assert model.num_layers == 3
    with torch.no_grad():
        assert torch.equal(model.forward_logits(X), module(input_ids=X).logits)
    tok = R.make_tokenizer()
    expected = tt.core.prompting.encode_pair(tok, "where was ada vell born", "paris 1962")
    assert model.encode("where was ada vell born", "paris 1962") == expected
    assert expected[0][0] == tok.bos_token_id and len(expected[1]) == 2


def test_tie_tracing_family_in_config_selects_family(tmp_path):
    """``tie_tracing_family`` in config.json overrides what ``model_type`` would give."""
    module = R.causal("llama")
    module.config.tie_tracing_family = "tiny-ar"
    module.save_pretrained(tmp_path)
    R.make_tokenizer().save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["tie_tracing_family"] == "tiny-ar"
    model = tt.load_model(tmp_path)
    assert model.backbone.family == "tiny-ar" and model.is_causal
    assert model.mask_token_id is None
    assert tt.load_model(tmp_path, family="llama").backbone.family == "llama"


def test_missing_checkpoint_errors(tmp_path):
    """A missing directory or one without config.json raises ``CheckpointNotFoundError`` naming it."""
    missing = tmp_path / "nowhere"
    with pytest.raises(tt.CheckpointNotFoundError, match="nowhere"):
        tt.load_model(missing)
    empty = tmp_path / "empty_ckpt"
    empty.mkdir()
    with pytest.raises(tt.CheckpointNotFoundError, match="empty_ckpt.*config.json"):
        tt.load_model(empty)


def test_unbuilt_embedded_model_says_how_to_train(tmp_path, monkeypatch):
    """An embedded name whose files are absent tells the user the training command."""
    monkeypatch.setattr(tt_model, "ZOO_DIR", tmp_path)
    for name in tt_model.EMBEDDED_MODELS:
        with pytest.raises(
            tt.CheckpointNotFoundError, match=rf"python -m tie_tracing\.zoo\.train {name}"
        ):
            tt.load_model(name)


def test_trust_remote_code_defaults_false(saved_mdlm, monkeypatch):
    """``load_model`` passes ``trust_remote_code=False`` (and offline loading) unless asked."""
    import transformers

    path, _ = saved_mdlm
    calls = []
    for auto in (
        transformers.AutoConfig,
        transformers.AutoModelForCausalLM,
        transformers.AutoTokenizer,
    ):
        original = auto.from_pretrained

        def record(*args, _original=original, _name=auto.__name__, **kwargs):
            calls.append((_name, kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", record)
    tt.load_model(path)
    names = [n for n, _ in calls]
    assert {"AutoConfig", "AutoModelForCausalLM", "AutoTokenizer"} <= set(names)
    for name, kwargs in calls:
        assert kwargs.get("trust_remote_code") is False, name
        assert kwargs.get("local_files_only") is True, name
    model_kwargs = [kw for n, kw in calls if n == "AutoModelForCausalLM"]
    assert all(kw.get("use_safetensors") is True for kw in model_kwargs)
    calls.clear()
    tt.load_model(path, trust_remote_code=True)
    assert calls and all(kw.get("trust_remote_code") is True for _, kw in calls)


def test_load_model_refuses_pickled_weights(tmp_path, mdlm):
    """A checkpoint with only pickled weights is refused with a message naming safetensors."""
    mdlm._module.config.save_pretrained(tmp_path)
    torch.save(mdlm._module.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(tt.CheckpointNotFoundError, match="safetensors"):
        tt.load_model(tmp_path)


# -- MMaDA, LLaDA-MoE, DiffuLLaMA --------------------------------------------------------------

MORE = ("mmada", "llada-moe", "diffullama")


@pytest.fixture(scope="module")
def more():
    """Replicas of the other MDLM table entries (real module names; tests/replicas.py)."""
    return R.more_replicas()


@pytest.mark.parametrize(
    "config, family",
    [
        (SimpleNamespace(model_type="mmada"), "mmada"),
        (SimpleNamespace(model_type=None, architectures=["MMadaModelLM"]), "mmada"),
        (SimpleNamespace(model_type="llada_moe"), "llada-moe"),
        (SimpleNamespace(model_type="lladamoe"), "llada-moe"),
        (SimpleNamespace(model_type=None, architectures=["LLaDAMoEModelLM"]), "llada-moe"),
    ],
)
def test_detect_more_families(config, family):
    """MMaDA and LLaDA-MoE are recognised from model_type or architectures."""
    assert detect_family(config) == family


@pytest.mark.parametrize("family", MORE)
def test_more_families_resolve_their_sites(more, family):
    """Every site resolves to the family's real module; site envoys read what torch hooks see."""
    model = more[family]
    assert model.backbone.family == family and model.num_layers == 3
    root = model._module
    for layer in range(3):
        if family == "mmada":
            block = root.model.transformer["blocks"][layer]
            expected = {"attn": block.attn_out, "mlp": block.ff_out, "resid": block}
            assert block.ff_out is not root.model.transformer["ff_out"]  # not the LM head
        else:
            block = root.model.layers[layer]
            expected = {"attn": block.self_attn, "mlp": block.mlp, "resid": block}
        for m, module in expected.items():
            assert model.site_module(layer, m) is module, (family, layer, m)
    captured: dict = {}
    handles = [
        model.site_module(layer, m).register_forward_hook(
            lambda _m, _i, o, key=(layer, m): captured.__setitem__(key, hidden_of(o).clone())
        )
        for layer in range(3)
        for m in ("attn", "mlp", "resid")
    ]
    try:
        saved = {}
        with torch.no_grad(), model.logits(X):
            for layer in range(3):
                for m in ("attn", "mlp", "resid"):
                    saved[(layer, m)] = model.site(layer, m).output.save()
    finally:
        for h in handles:
            h.remove()
    for key, value in saved.items():
        assert torch.equal(hidden_of(value), captured[key]), (family, key)
    if family == "llada-moe":  # the MoE block's output is (hidden, router_logits)
        assert isinstance(saved[(0, "mlp")], tuple) and saved[(0, "mlp")][1].shape[-1] == 4


@pytest.mark.parametrize("family", MORE)
def test_more_families_shift_and_direction(more, family):
    """MMaDA and LLaDA-MoE logits are unshifted, DiffuLLaMA's shifted; all are bidirectional
    and use the tokenizer's mask id (the replicas' small vocabulary)."""
    model = more[family]
    raw = raw_logits(model, X)
    with torch.no_grad():
        aligned = model.forward_logits(X)
    if family == "diffullama":
        assert model.backbone.shifted
        assert torch.equal(aligned[:, 1:], raw[:, :-1])
    else:
        assert not model.backbone.shifted
        assert torch.equal(aligned, raw)
    other = X.clone()
    other[:, -1] = 20
    assert not model.is_causal
    assert not torch.allclose(raw_logits(model, X)[:, 0], raw_logits(model, other)[:, 0])
    assert model.mask_token_id == 3


@pytest.mark.parametrize("family", MORE)
def test_more_families_trace_exactly(more, family):
    """A TIE run on each replica equals the slow hook reference (with the family's own sampler)."""
    import warnings

    from tie_tracing.tracing.reference import reference_ie

    model = more[family]
    fact = tt.Fact("ada vell", "where was ada vell born", "lisbon porto paris", id="b0")
    sampler = tt.DreamSampler(alg="entropy") if family == "diffullama" else tt.LLaDASampler()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = tt.trace_tie(model, [fact], steps=3, nu=2.0, progress=False, sampler=sampler)
    ref = reference_ie(model, fact, steps=3, nu=2.0, sampler=sampler)
    assert result.tie.shape == (1, 3, 3, 3)
    torch.testing.assert_close(
        torch.nan_to_num(result.ie[0]), torch.nan_to_num(ref["ie"]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(result.lp_clean[0], ref["lp_clean"], atol=1e-5, rtol=0)
    assert torch.nan_to_num(result.ie).abs().max() > 0
