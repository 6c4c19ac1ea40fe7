"""Edit memory (SPEC §8): the ridge algebra, the nnsight install/remove cycle, persistence, errors."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import nnsight
import pytest
import replicas as R
import torch

import tie_tracing as tt
from tie_tracing.core._io import ResultFileError
from tie_tracing.core.backbones import hidden_of
from tie_tracing.core.context import STANDALONE, ForwardContext
from tie_tracing.editing import EditConfig, EditHandle, EditMemoryError, capture_keys_and_deltas
from tie_tracing.editing.install import live_handles

DATA = Path(__file__).resolve().parent.parent / "data"


def _at(step) -> ForwardContext:
    """The context of a forward at ``step`` whose answer span is unknown."""
    return ForwardContext(step=step, answer_start=None)


FACTS = [
    tt.Fact(
        subject="ada vell",
        question="where was ada vell born",
        answer="lisbon",
        target="porto",
        id="ada",
    ),
    tt.Fact(
        subject="mara tov",
        question="what book was mara tov the writer of",
        answer="orion lyra",
        target="paris",
        id="mara",
    ),
    tt.Fact(subject="kess", question="when was kess born", answer="1962", target="1971", id="kess"),
    tt.Fact(
        subject="orion",
        question="what is the city of orion",
        answer="porto",
        target="lisbon",
        id="orion",
    ),
]
LAYER = 1


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.fixture(scope="module")
def memory(mdlm):
    return tt.EditMemory.build(mdlm, FACTS, layer=LAYER, alpha=1.0, lam=0.1)


def _synthetic(n: int, d: int, *, mode="ridge", lam=0.1, q=None, alpha=1.5, seed=0, kappa=1.0):
    g = torch.Generator().manual_seed(seed)
    keys, v, vs = (torch.randn(n, d, generator=g) for _ in range(3))
    config = EditConfig(layer=0, alpha=alpha, lam=lam, q=q, mode=mode, kappa=kappa)
    info = {"name": "synthetic", "family": "tiny-mdlm", "hidden_size": d, "num_layers": 1}
    ids = [f"f{i}" for i in range(n)]
    return tt.EditMemory(
        config, ids=ids, keys=keys, answer_values=v, target_values=vs, targets=ids, model_info=info
    )


def _query_x(model, fact):
    prompt, answer = model.encode(fact.question, fact.answer)
    return torch.tensor([prompt + [model.mask_token_id] * len(answer)]), len(prompt)


# ------------------------------------------------------------------------------ algebra


@pytest.mark.parametrize("n, d", [(5, 16), (24, 16)])
def test_dense_update_equals_primal_ridge_map(n, d):
    """Dense Eq. 12 = α Dᵀ G⁻¹ K h = α Wᵀh with W = (KᵀK + λ_abs I_d)⁻¹KᵀD (N < d and N > d)."""
    mem = _synthetic(n, d)
    h = torch.randn(7, 3, d, dtype=torch.float64)
    k, delta = mem.keys.double(), mem.deltas.double()
    gram = k @ k.T + mem.lam_abs * torch.eye(n, dtype=torch.float64)
    dual = mem.config.alpha * torch.linalg.solve(gram, k @ h.reshape(-1, d).T).T @ delta
    primal = mem.config.alpha * h.reshape(-1, d) @ mem.primal_map()
    assert torch.allclose(dual, primal, atol=1e-9, rtol=1e-9)
    assert torch.allclose(mem.update(h.float()).reshape(-1, d).double(), dual, atol=1e-4, rtol=1e-4)


def test_lam_abs_is_scale_free():
    """λ_abs = λ · mean(diag(KKᵀ)); scaling the keys by s scales λ_abs by s² and leaves c·K fixed."""
    mem = _synthetic(6, 8, lam=0.3)
    assert mem.lam_abs == pytest.approx(0.3 * float((mem.keys.double() ** 2).sum(-1).mean()))
    h = torch.randn(4, 8)
    scaled = tt.EditMemory(
        mem.config,
        ids=mem.ids,
        keys=3 * mem.keys,
        answer_values=mem.answer_values,
        target_values=mem.target_values,
        targets=mem.targets,
        model_info=mem.model_info,
    )
    assert torch.allclose(scaled.update(3 * h), mem.update(h), atol=1e-4)


def test_top_q_with_q_equal_n_is_dense_and_sparsifies_otherwise():
    """top_q with q = N equals the dense memory; q < N keeps the q largest-|c| coefficients."""
    dense, full = _synthetic(6, 16), _synthetic(6, 16, q=6)
    h = torch.randn(5, 16)
    assert torch.equal(dense.update(h), full.update(h))
    for q in (1, 2, 5):
        sparse = _synthetic(6, 16, q=q)
        c = sparse.coefficients(h)
        idx = c.abs().topk(q, dim=-1).indices
        kept = torch.zeros_like(c).scatter(-1, idx, c.gather(-1, idx))
        assert (kept != 0).sum(-1).le(q).all()
        assert torch.allclose(
            sparse.update(h), sparse.config.alpha * kept @ sparse.deltas, atol=1e-5
        )


def test_gated_edit_clips_the_gate():
    """Eq. 10: g = clip(⟨h,k⟩/⟨k,k⟩, 0, κ); anti-aligned tokens get 0, far-aligned ones κ."""
    mem = _synthetic(1, 8, mode="gated", kappa=2.0, alpha=0.5)
    k, delta = mem.keys[0], mem.deltas[0]
    h = torch.stack([-1.0 * k, 0.5 * k, 5.0 * k, torch.zeros(8)])
    gates = torch.tensor([0.0, 0.5, 2.0, 0.0])
    assert torch.allclose(mem.update(h), 0.5 * gates[:, None] * delta, atol=1e-5)


def test_steer_adds_the_mean_delta_everywhere():
    """act_steer: α · mean_f δ_f at every position, independent of h."""
    mem = _synthetic(3, 8, mode="steer", alpha=2.0)
    out = mem.update(torch.randn(2, 5, 8))
    assert torch.allclose(out, (2.0 * mem.deltas.mean(0)).expand(2, 5, 8))


def test_zero_lambda_with_dependent_keys_is_a_clear_error():
    """λ = 0 with linearly dependent keys raises EditMemoryError (never NaN)."""
    mem = _synthetic(3, 8, lam=0.0)
    keys = torch.cat([mem.keys, mem.keys[:1]])
    with pytest.raises(EditMemoryError, match="singular"):
        tt.EditMemory(
            mem.config,
            ids=["a", "b", "c", "d"],
            keys=keys,
            answer_values=torch.zeros(4, 8),
            target_values=torch.zeros(4, 8),
            targets=list("abcd"),
            model_info=mem.model_info,
        )
    assert torch.isfinite(_synthetic(3, 8, lam=0.0).update(torch.randn(2, 8))).all()


# ------------------------------------------------------------------------------ capture


def test_capture_matches_a_hooked_forward(mdlm):
    """k_f, v_f, v*_f equal means of the block output read with a plain torch hook."""
    targets = [f.target for f in FACTS]
    k, v, vs = capture_keys_and_deltas(mdlm, FACTS, targets, layer=LAYER)
    block = mdlm.site_module(LAYER, "resid")
    seen = {}
    handle = block.register_forward_hook(lambda _m, _i, o: seen.__setitem__("h", hidden_of(o)))
    try:
        for i, f in enumerate(FACTS):
            q = tt.tracing.encode_query(mdlm, f)
            p = len(q.prompt_ids)
            with torch.inference_mode():
                mdlm._module(
                    torch.tensor([list(q.prompt_ids) + [mdlm.mask_token_id] * len(q.answer_ids)])
                )
                assert torch.allclose(
                    k[i], seen["h"][0, list(q.subject_positions)].mean(0), atol=1e-5
                )
                mdlm._module(torch.tensor([list(q.prompt_ids) + list(q.answer_ids)]))
                assert torch.allclose(v[i], seen["h"][0, p:].mean(0), atol=1e-5)
                _, t = mdlm.encode(f.question, f.target)
                mdlm._module(torch.tensor([list(q.prompt_ids) + t]))
                assert torch.allclose(vs[i], seen["h"][0, p:].mean(0), atol=1e-5)
    finally:
        handle.remove()


def test_targets_options(mdlm):
    """targets: 'auto' uses Fact.target else a refusal; 'perturbed', 'refusal', explicit strings."""
    plain = tt.Fact(
        subject="ada vell",
        question="where was ada vell born",
        answer="lisbon",
        perturbed_answers=("paris",),
        id="plain",
    )
    assert tt.EditMemory.build(mdlm, [FACTS[0], plain], layer=LAYER).targets[0] == "porto"
    assert tt.EditMemory.build(mdlm, [plain], layer=LAYER).targets[0] in tt.core.load_refusals()
    assert tt.EditMemory.build(mdlm, [plain], layer=LAYER, targets="perturbed").targets == (
        "paris",
    )
    assert tt.EditMemory.build(mdlm, [plain], layer=LAYER, targets=["red"]).targets == ("red",)
    with pytest.raises(EditMemoryError, match="plain"):
        tt.EditMemory.build(mdlm, [plain], layer=LAYER, targets="target")


# ------------------------------------------------------------------------------ install / remove


def test_install_changes_outputs_and_removal_is_bit_exact(mdlm, memory):
    """Installed: logits and diffusion states change, no weight changes; removed: bit for bit."""
    x, p = _query_x(mdlm, FACTS[1])
    weights = {k: v.clone() for k, v in mdlm._module.state_dict().items()}
    ref_logits = mdlm.logits(x)
    ref_states = mdlm.denoise(x, answer_start=p, steps=4).states
    with memory.install(mdlm) as handle:
        assert handle.installed
        assert not torch.equal(mdlm.logits(x), ref_logits)
        mdlm.denoise(x, answer_start=p, steps=4)
        new = mdlm._module.state_dict()
        assert all(torch.equal(new[k], w) for k, w in weights.items())
    assert not handle.installed and mdlm._edits == []
    assert torch.equal(mdlm.logits(x), ref_logits)
    assert torch.equal(mdlm.denoise(x, answer_start=p, steps=4).states, ref_states)


def test_edit_fires_on_every_diffusion_step(mdlm, memory):
    """The edit acts on each of the T forwards of one denoise run, and on stand-alone forwards."""
    x, p = _query_x(mdlm, FACTS[0])
    with memory.install(mdlm) as handle:
        mdlm.denoise(x, answer_start=p, steps=6)
        assert dict(handle.fired) == {k: 1 for k in range(6)}
        tt.answer_logprob(mdlm, FACTS[:1])
        assert handle.fired[None] == 1
        with mdlm.denoise(x, answer_start=p, steps=6) as tracer:  # inside a user's own trace too
            seen = nnsight.save([])
            for _k in tracer.iter[:6]:
                seen.append(hidden_of(mdlm.site(LAYER, "resid").output).clone())
        assert all(handle.fired[k] == 2 for k in range(6))
    # what the user's trace saw is the edited activation: it equals unedited + update
    with mdlm.denoise(x, answer_start=p, steps=6) as tracer:
        clean = nnsight.save([])
        for _k in tracer.iter[:6]:
            clean.append(hidden_of(mdlm.site(LAYER, "resid").output).clone())
    assert torch.allclose(seen[0], clean[0] + memory.update(clean[0]), atol=1e-5)


def test_step_set_limits_diffusion_forwards_but_not_standalone(mdlm, memory):
    """edit_steps=(1, 3): the loop's other steps are untouched; a stand-alone forward is edited."""
    early = memory.with_config(edit_steps=(1, 3))
    x, p = _query_x(mdlm, FACTS[0])
    with early.install(mdlm) as handle:
        mdlm.denoise(x, answer_start=p, steps=5)
        assert dict(handle.fired) == {1: 1, 3: 1}
        assert dict(handle.skipped) == {0: 1, 2: 1, 4: 1}
        assert not torch.equal(mdlm.logits(x), memory_free_logits(mdlm, x))
        assert handle.fired[None] == 1


def memory_free_logits(model, x):
    saved = model._edits
    model._edits = []
    try:
        return model.logits(x)
    finally:
        model._edits = saved


def test_removal_keeps_other_interventions(mdlm, memory):
    """Removing one memory leaves a second memory and a user's own nnsight edit in place."""
    x, _ = _query_x(mdlm, FACTS[2])
    other = memory.with_config(alpha=3.0)
    with other.install(mdlm):
        only_other = mdlm.logits(x)
    with mdlm.edit(inplace=True):
        mdlm.site(0, "mlp").output[:] = 0.0
    user_edit = mdlm._edits[-1]
    try:
        h1 = memory.install(mdlm)
        h2 = other.install(mdlm)
        h1.remove()
        assert h2.installed and any(m is user_edit for m in mdlm._edits)
        both = mdlm.logits(x)
        h2.remove()
        assert not torch.equal(both, only_other)  # the user's edit still acts
        assert mdlm._edits == [user_edit]
    finally:
        mdlm.clear_edits()
    assert torch.equal(memory_free_logits(mdlm, x), mdlm.logits(x))


def test_insert_and_without_match_a_fresh_build(mdlm):
    """Streaming: build(2) + insert(2) == build(4); without(id) == build without it; both
    return new values and leave the memory they started from unchanged."""
    full = tt.EditMemory.build(mdlm, FACTS, layer=LAYER, lam=0.1, q=2)
    small = tt.EditMemory.build(mdlm, FACTS[:2], layer=LAYER, lam=0.1, q=2)
    small_keys = small.keys.clone()
    grown = small.insert(FACTS[2:])
    assert torch.allclose(grown.keys, full.keys, atol=1e-6) and grown.ids == full.ids
    assert small.ids == ("ada", "mara") and torch.equal(small.keys, small_keys)
    h = torch.randn(3, mdlm.hidden_size)
    assert torch.allclose(grown.update(h), full.update(h), atol=1e-5)
    shrunk = full.without(["mara"])
    assert full.ids == tuple(f.id for f in FACTS)
    ref = tt.EditMemory.build(mdlm, [FACTS[0], *FACTS[2:]], layer=LAYER, lam=0.1, q=2)
    assert shrunk.ids == ref.ids and torch.allclose(shrunk.update(h), ref.update(h), atol=1e-5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        full.keys = shrunk.keys  # type: ignore[misc]


def test_remove_is_a_deprecated_alias_of_without(memory):
    """memory.remove(ids) warns that it returns a new value, and returns what without() does."""
    with pytest.warns(DeprecationWarning, match="without"):
        shrunk = memory.remove("kess")
    assert shrunk.equals(memory.without("kess")) and "kess" in memory.ids


def test_insert_while_installed_captures_the_frozen_model(mdlm):
    """handle.insert captures with the edit suspended and acts at once; handle.without takes
    the fact out again, and the edit then equals the original memory's."""
    mem = tt.EditMemory.build(mdlm, FACTS[:1], layer=LAYER, alpha=2.0)
    x, _ = _query_x(mdlm, FACTS[1])
    with mem.install(mdlm) as handle:
        before = mdlm.logits(x)
        assert handle.insert(FACTS[1:2]) is handle and len(mdlm._edits) == 1
        after = mdlm.logits(x)
        grown = handle.memory
        handle.without("mara")
        again = mdlm.logits(x)
    ref = tt.EditMemory.build(mdlm, FACTS[:2], layer=LAYER, alpha=2.0)
    assert torch.equal(grown.keys, ref.keys) and mem.ids == ("ada",)
    assert not torch.equal(before, after) and torch.equal(before, again)


def test_swap_refuses_another_site_or_a_removed_handle(mdlm, memory):
    """A live edit takes a new memory only at its own site; a removed handle takes none."""
    other_site = tt.EditMemory.build(mdlm, FACTS[:2], layer=LAYER + 1, alpha=1.0, lam=0.1)
    with memory.install(mdlm) as handle:
        with pytest.raises(EditMemoryError, match="install it separately"):
            handle.swap(other_site)
        assert handle.memory is memory
    with pytest.raises(EditMemoryError, match="removed"):
        handle.swap(memory.with_config(alpha=2.0))
    assert mdlm._edits == []


# ------------------------------------------------------------------------------ persistence


def test_save_load_round_trip_is_exact(tmp_path, mdlm, memory):
    """save/load: identical tensors, config and ids; the loaded memory edits identically."""
    path = memory.save(tmp_path / "mem.safetensors")
    loaded = tt.EditMemory.load(path)
    assert loaded.equals(memory)
    x, _ = _query_x(mdlm, FACTS[0])
    with memory.install(mdlm):
        a = mdlm.logits(x)
    with loaded.install(mdlm):
        b = mdlm.logits(x)
    assert torch.equal(a, b)


def test_memories_in_the_earlier_file_layout_still_load(tmp_path, mdlm, gated):
    """A gated memory saved by the earlier edit-memory writer (tests/data, written before the
    one serialiser) loads equal to the same memory built now, and re-saves in today's format."""
    legacy = tt.EditMemory.load(DATA / "legacy_gated_memory.safetensors")
    assert legacy.equals(gated)
    assert legacy.gate.calibration == gated.gate.calibration
    again = tt.EditMemory.load(legacy.save(tmp_path / "resaved.safetensors"))
    assert again.equals(legacy) and again.timings == legacy.timings


def test_corrupt_or_truncated_file_is_a_clear_error(tmp_path, memory):
    """A truncated or garbage file raises EditMemoryError (also a ResultFileError), a plain
    safetensors file says it is none of ours, a missing one FileNotFoundError (a result of
    another kind: tests/test_bad_input.py)."""
    path = memory.save(tmp_path / "mem.safetensors")
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    for name in ("trunc", "junk"):
        with pytest.raises(EditMemoryError, match="truncated or corrupt") as err:
            tt.EditMemory.load(tmp_path / f"{name}.safetensors")
        assert isinstance(err.value, ResultFileError)
    with pytest.raises(EditMemoryError, match="not a tie_tracing result"):
        tt.EditMemory.load(DATA / "release_raw_tie.safetensors")  # plain safetensors
    with pytest.raises(FileNotFoundError):
        tt.EditMemory.load(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------------------ bad inputs


def test_bad_requests_raise_named_errors(mdlm, memory):
    """Duplicate ids, absent ids, q out of range, no layer, wrong model: each a clear error."""
    with pytest.raises(EditMemoryError, match="duplicate.*ada"):
        tt.EditMemory.build(mdlm, [FACTS[0], FACTS[0]], layer=LAYER)
    with pytest.raises(EditMemoryError, match="duplicate.*ada"):
        tt.EditMemory.build(mdlm, FACTS[:2], layer=LAYER).insert(FACTS[:1])
    with pytest.raises(EditMemoryError, match="nobody"):
        tt.EditMemory.build(mdlm, FACTS[:2], layer=LAYER).without(["nobody"])
    for q in (0, 5):
        with pytest.raises(EditMemoryError, match="q"):
            tt.EditMemory.build(mdlm, FACTS, layer=LAYER, q=q)
    with pytest.raises(EditMemoryError, match="q=2"):
        tt.EditMemory.build(mdlm, FACTS[:2], layer=LAYER, q=2).without("ada")
    with pytest.raises(EditMemoryError, match="needs a site: pass layer="):
        tt.EditMemory.build(mdlm, FACTS, alpha=1.0)
    with pytest.raises(ValueError, match="layer"):
        tt.EditMemory.build(mdlm, FACTS, layer=mdlm.num_layers)
    with pytest.raises(EditMemoryError, match="singular"):
        dup = tt.Fact(
            subject="ada vell", question="where was ada vell born", answer="lisbon", id="ada-again"
        )
        tt.EditMemory.build(mdlm, [FACTS[0], dup], layer=LAYER, lam=0.0)
    deeper = R.wrap(R.LLaDAReplica(layers=4))
    with pytest.raises(EditMemoryError, match="4 layers"):
        memory.install(deeper)
    assert mdlm._edits == []


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_install_on_other_families(replicas, family):
    """LLaDA (blocks return (x, cache)) and Dream (shifted logits): edit acts, removal is exact."""
    model = replicas[family]
    mem = tt.EditMemory.build(model, FACTS[:2], layer=1, alpha=2.0, lam=0.1)
    x, p = _query_x(model, FACTS[0])
    ref = model.denoise(x, answer_start=p, steps=3).states
    ref_logits = model.logits(x)
    with mem.install(model) as handle:
        assert not torch.equal(model.logits(x), ref_logits)
        model.denoise(x, answer_start=p, steps=3)
        assert [handle.fired[k] for k in range(3)] == [1, 1, 1]
    assert torch.equal(model.denoise(x, answer_start=p, steps=3).states, ref)
    assert torch.equal(model.logits(x), ref_logits)


def test_per_row_steps_match_per_step_application(memory, mdlm):
    """A forward mixing rows of several steps (the TIE sweep) edits each row as its own step would."""
    from tie_tracing.editing import EditHandle

    restricted = memory.with_config(edit_steps=(0, 2))
    hidden = torch.randn(3, 5, mdlm.hidden_size)
    steps = torch.tensor([0, 1, 2])
    mixed = hidden.clone()
    EditHandle(restricted, mdlm)(mixed, _at(steps))
    for i, k in enumerate(steps.tolist()):
        alone = hidden[i : i + 1].clone()
        EditHandle(restricted, mdlm)(alone, _at(k))
        torch.testing.assert_close(mixed[i : i + 1], alone)
    assert torch.equal(mixed[1], hidden[1])  # step 1 is outside the step set


def test_handle_counts_forwards_per_step_not_rows(memory, mdlm):
    """fired/skipped count a mixed-step forward once per distinct step, however many rows."""
    from tie_tracing.editing import EditHandle

    restricted = memory.with_config(edit_steps=(0, 2))
    handle = EditHandle(restricted, mdlm)
    steps = torch.tensor([0, 0, 0, 1, 1, 2])  # one forward: rows at steps {0, 1, 2}
    handle(torch.randn(6, 5, mdlm.hidden_size), _at(steps))
    assert dict(handle.fired) == {0: 1, 2: 1} and dict(handle.skipped) == {1: 1}
    handle(torch.randn(6, 5, mdlm.hidden_size), _at(steps))  # a second such forward
    assert dict(handle.fired) == {0: 2, 2: 2} and dict(handle.skipped) == {1: 2}
    everywhere = EditHandle(memory, mdlm)  # step set "all": same per-forward counting
    everywhere(torch.randn(4, 5, mdlm.hidden_size), _at(torch.tensor([3, 3, 5, 5])))
    assert dict(everywhere.fired) == {3: 1, 5: 1} and not everywhere.skipped


def test_steps_is_a_deprecated_alias_of_edit_steps(memory):
    """EditConfig(steps=...), config.steps and with_config(steps=...) warn and mean edit_steps;
    giving both names is an error; a record written before the rename reads as edit_steps."""
    with pytest.warns(DeprecationWarning, match="edit_steps"):
        c = EditConfig(layer=0, steps=[2, 1])
    assert c.edit_steps == (1, 2) and c == EditConfig(layer=0, edit_steps=(1, 2))
    with pytest.warns(DeprecationWarning, match="edit_steps"):
        assert c.steps == (1, 2)
    with pytest.warns(DeprecationWarning, match="edit_steps"):
        assert memory.with_config(steps=3).config.edit_steps == (3,)
    with pytest.raises(TypeError, match="once"), pytest.warns(DeprecationWarning):
        EditConfig(layer=0, steps=1, edit_steps=2)
    old = {k: v for k, v in c.to_dict().items() if k != "edit_steps"} | {"steps": [1, 2]}
    assert EditConfig.from_dict(old) == c and "steps" not in c.to_dict()


def test_build_accepts_an_int_step_and_refuses_bad_steps(mdlm):
    """edit_steps=3 is the one-step set {3}; negative, non-integer or empty step sets raise
    ValueError; steps= (a count elsewhere) raises a TypeError naming edit_steps."""
    mem = tt.EditMemory.build(mdlm, FACTS[:2], layer=LAYER, lam=0.1, edit_steps=3)
    assert mem.config.edit_steps == (3,)
    assert tt.EditMemory.build(
        mdlm, FACTS[:2], layer=LAYER, lam=0.1, edit_steps=[2, 0, 2]
    ).config.edit_steps == (0, 2)
    with pytest.raises(TypeError, match="edit_steps"):
        tt.EditMemory.build(mdlm, FACTS[:2], layer=LAYER, lam=0.1, steps={0, 1})
    assert mem.with_config(edit_steps=1).config.edit_steps == (1,)
    assert EditConfig(layer=0, edit_steps=torch.tensor([1, 0])).edit_steps == (0, 1)
    x, p = _query_x(mdlm, FACTS[0])
    with mem.install(mdlm) as handle:
        mdlm.denoise(x, answer_start=p, steps=5)
    assert dict(handle.fired) == {3: 1} and dict(handle.skipped) == {0: 1, 1: 1, 2: 1, 4: 1}
    for bad, match in (
        (-1, "≥ 0"),
        ([0, -2], "≥ 0"),
        (1.5, "integer"),
        ([0, 1.0], "integer"),
        (True, "integer"),
        ("3", "integer"),
        ([], "non-empty"),
    ):
        with pytest.raises(ValueError, match=match):
            tt.EditMemory.build(mdlm, FACTS[:2], layer=LAYER, lam=0.1, edit_steps=bad)


# ------------------------------------------------------------------------------ algebra (pure)

from tie_tracing.editing import algebra  # noqa: E402
from tie_tracing.editing.capture import query_ids  # noqa: E402


def test_algebra_ridge_update_is_the_primal_identity():
    """algebra.ridge_update (dense, ungated) = α hᵀW with W = (KᵀK + λ_abs I_d)⁻¹KᵀD, float64."""
    g = torch.Generator().manual_seed(3)
    for n, d in ((4, 12), (20, 12)):
        keys, deltas = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
        h = torch.randn(5, d, generator=g, dtype=torch.float64)
        _chol, coef = algebra.factorize(keys, 0.2)
        dual = algebra.ridge_update(h, coef, deltas.double(), alpha=1.5, q=n)
        w = algebra.primal_map(keys, deltas, algebra.lam_abs(keys, 0.2))
        torch.testing.assert_close(dual, 1.5 * h @ w, atol=1e-10, rtol=1e-10)


def test_algebra_gate_acts_before_top_q():
    """ridge_update(gate=g) = α top_q(g ⊙ c) D: a closed gate frees its top-q slot for others."""
    g = torch.Generator().manual_seed(4)
    keys, deltas, h = (torch.randn(6, 8, generator=g) for _ in range(3))
    _chol, coef = algebra.factorize(keys, 0.1)
    coef = coef.float()
    gate = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 1.0]]).expand(6, -1)
    for q in (1, 2, 6):
        want = 2.0 * algebra.top_q((h @ coef.T) * gate, q) @ deltas
        got = algebra.ridge_update(h, coef, deltas, alpha=2.0, q=q, gate=gate)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        closed = algebra.ridge_update(h, coef, deltas, alpha=2.0, q=q, gate=torch.zeros(6))
        assert torch.equal(closed, torch.zeros_like(closed))


def test_whitener_whitens_the_shrunk_covariance():
    """C_s^{-½} C_s C_s^{-½} = I with C_s = (1 − s)C + s(tr C/d)I, even with fewer rows than d."""
    x = torch.randn(5, 9, generator=torch.Generator().manual_seed(5)) * torch.arange(1, 10)
    mu, w = algebra.whitener(x, 0.3)
    xc = x.double() - mu
    cov = xc.T @ xc / 5
    cov_s = 0.7 * cov + 0.3 * cov.trace() / 9 * torch.eye(9, dtype=torch.float64)
    torch.testing.assert_close(w @ cov_s @ w, torch.eye(9, dtype=torch.float64))
    assert torch.allclose(w, w.T)
    with pytest.raises(EditMemoryError, match="shrinkage"):
        algebra.whitener(x, 0.0)


def test_window_scores_match_a_loop():
    """score_f = max over windows of |S_f| consecutive valid tokens of cos(mean u_W, z_f)."""
    g = torch.Generator().manual_seed(6)
    u = torch.randn(3, 7, 5, generator=g)
    valid = torch.ones(3, 7, dtype=torch.bool)
    valid[0, 3] = False
    valid[1, 1:] = False  # row 1 has a single valid token: no window of length 2 or 3
    z = torch.nn.functional.normalize(torch.randn(4, 5, generator=g), dim=-1)
    lengths = torch.tensor([1, 2, 3, 2])
    got = algebra.window_scores(u, valid, z, lengths)
    for b in range(3):
        for f in range(4):
            L = int(lengths[f])
            best = float("-inf")
            for start in range(7 - L + 1):
                if valid[b, start : start + L].all():
                    m = u[b, start : start + L].mean(0)
                    best = max(best, float(torch.nn.functional.cosine_similarity(m, z[f], dim=0)))
            assert got[b, f] == pytest.approx(best, abs=1e-5) or (
                best == got[b, f] == float("-inf")
            )
    assert got[1, 1] == float("-inf") and got[1, 0] > float("-inf")


# ------------------------------------------------------------------------------ gated memories

ADA = [
    FACTS[0],
    tt.Fact(
        subject="ada vell",
        question="what book was ada vell the writer of",
        answer="orion lyra",
        target="paris",
        id="ada-book",
    ),
]
ADA_HELD_OUT = [
    tt.Fact(subject="ada vell", question="when was ada vell born", answer="1971", id="ada-year")
]
CALIBRATION = [
    tt.Fact(subject=s, question=q.format(s=s), answer=a, id=f"cal-{i}-{j}")
    for i, s in enumerate(["mara tov", "kess", "orion", "lyra vell"])
    for j, (q, a) in enumerate(
        [
            ("where was {s} born", "porto"),
            ("when was {s} born", "1962"),
            ("what is the city of {s}", "paris"),
        ]
    )
]


@pytest.fixture(scope="module")
def gated(mdlm):
    return tt.EditMemory.build(
        mdlm, ADA, layer=LAYER, alpha=2.0, lam=0.1, subject_gate=True, apply_at="answer",
        key_at="answer", calibration=CALIBRATION,
    )  # fmt: skip


def _query(model, fact):
    return torch.tensor([query_ids(model, fact)])


def _site(model, x, layer=LAYER):
    with model.logits(x):
        h = nnsight.save(hidden_of(model.site(layer, "resid").output).clone())
    return h


def test_gate_opens_on_the_forgotten_subject_and_not_on_calibration_prompts(mdlm, gated):
    """Scores exceed τ_f on the forgotten subject's prompts (also unseen questions) and not on any
    calibration prompt; installed, calibration prompts keep their logits bit for bit."""
    tau = gated.gate_thresholds
    assert tau is not None and (tau < 1).all() and gated.gate_blind == ()
    for f in ADA + ADA_HELD_OUT:
        x = _query(mdlm, f)
        assert (gated.gate_scores(_site(mdlm, x), x)[0] > tau).all(), f.id
    for f in CALIBRATION:
        x = _query(mdlm, f)
        assert (gated.gate_scores(_site(mdlm, x), x)[0] <= tau).all(), f.id

    def filled(f):  # the other end of a trajectory: the answer decoded
        prompt, answer = mdlm.encode(f.question, f.answer)
        return torch.tensor([prompt + answer])

    base = {f.id: mdlm.logits(_query(mdlm, f)) for f in ADA + ADA_HELD_OUT + CALIBRATION}
    base_filled = {f.id: mdlm.logits(filled(f)) for f in CALIBRATION}
    with gated.install(mdlm):
        for f in ADA + ADA_HELD_OUT:
            assert not torch.equal(mdlm.logits(_query(mdlm, f)), base[f.id]), f.id
        for f in CALIBRATION:
            assert torch.equal(mdlm.logits(_query(mdlm, f)), base[f.id]), f.id
        for f in CALIBRATION:  # with apply_at='answer' nothing moves here anyway; the gate is
            x = filled(f)  # checked directly below
            assert torch.equal(mdlm.logits(x), base_filled[f.id]), f.id
    for f in CALIBRATION:
        x = filled(f)
        assert (gated.gate_scores(_site(mdlm, x), x)[0] <= tau).all(), f.id


def test_thresholds_leave_out_the_facts_own_subject(mdlm):
    """A calibration prompt about the memory's own subject does not set its threshold."""
    own = [
        tt.Fact(
            subject="ada vell", question="what is the city of ada vell", answer="porto", id="own"
        )
    ]
    with_own = tt.EditMemory.build(
        mdlm, ADA, layer=LAYER, subject_gate=True, calibration=CALIBRATION + own
    )
    scores = {}
    for f in CALIBRATION + own:
        x = _query(mdlm, f)
        scores[f.id] = with_own.gate_scores(_site(mdlm, x), x)[0]
    others = torch.stack([scores[f.id] for f in CALIBRATION]).amax(0)
    torch.testing.assert_close(with_own.gate_score_max, others)
    assert (scores["own"] > others).all()
    with pytest.raises(EditMemoryError, match="other subjects"):
        tt.EditMemory.build(mdlm, ADA, layer=LAYER, subject_gate=True, calibration=own)


def test_answer_slots_only_leave_other_positions_bit_identical(mdlm, gated):
    """apply_at='answer': at the site, prompt positions keep their exact bits and the [MASK]
    slots change; earlier layers are untouched; the handle does the same on mixed rows."""
    x = _query(mdlm, ADA[0])
    masked = x[0] == mdlm.mask_token_id
    ungated = gated.with_config(subject_gate=False)
    ref_site, ref_before = _site(mdlm, x), _site(mdlm, x, LAYER - 1)
    for mem in (gated, ungated):
        with mem.install(mdlm):
            site, before = _site(mdlm, x), _site(mdlm, x, LAYER - 1)
        assert torch.equal(site[0, ~masked], ref_site[0, ~masked])
        assert not torch.equal(site[0, masked], ref_site[0, masked])
        assert torch.equal(before, ref_before)
    hidden = torch.randn(2, 6, mdlm.hidden_size)
    ids = torch.tensor([[1, 5, 6, 3, 3, 7], [1, 3, 3, 3, 8, 9]])
    edited = hidden.clone()
    EditHandle(ungated, mdlm)(edited, STANDALONE, ids)
    slots = ids == mdlm.mask_token_id
    assert torch.equal(edited[~slots], hidden[~slots]) and not torch.equal(
        edited[slots], hidden[slots]
    )
    torch.testing.assert_close(edited - hidden, ungated.update(hidden, ids))


def test_gated_update_is_the_ridge_update_with_the_gate(mdlm, gated):
    """update = α Dᵀ top_q(g ⊙ G⁻¹K^O h) at the answer slots of rows whose gate opened, else 0."""
    xs = [_query(mdlm, f) for f in (ADA_HELD_OUT[0], CALIBRATION[0])]
    assert xs[0].shape == xs[1].shape
    x = torch.cat(xs)
    h = _site(mdlm, x)
    gate = (gated.gate_scores(h, x) > gated.gate_thresholds).float()
    assert gate[0].all() and not gate[1].any()
    coef = algebra.factorize(gated.slot_keys, gated.config.lam)[1].float()
    want = 2.0 * ((h @ coef.T) * gate[:, None, :]) @ gated.deltas
    want[x != mdlm.mask_token_id] = 0.0
    torch.testing.assert_close(gated.update(h, x), want, atol=1e-5, rtol=1e-5)


def test_gated_memory_in_the_diffusion_loop_and_mixed_steps(mdlm, gated):
    """Installed, the gated memory fires at each step; a calibration prompt's trajectory is
    bit-identical; rows of mixed steps are edited as their own steps would be."""
    f = CALIBRATION[0]
    prompt, _ = mdlm.encode(f.question, f.answer)
    x = _query(mdlm, f)
    ref = mdlm.denoise(x, answer_start=len(prompt), steps=3).states
    with gated.install(mdlm) as handle:
        out = mdlm.denoise(x, answer_start=len(prompt), steps=3).states
        assert dict(handle.fired) == {0: 1, 1: 1, 2: 1}
    assert torch.equal(out, ref)
    restricted = gated.with_config(edit_steps=(0, 2))
    x2 = torch.cat([_query(mdlm, ADA[0])] * 3)
    hidden = _site(mdlm, x2)
    mixed = hidden.clone()
    EditHandle(restricted, mdlm)(mixed, _at(torch.tensor([0, 1, 2])), x2)
    for i, k in enumerate((0, 1, 2)):
        alone = hidden[i : i + 1].clone()
        EditHandle(restricted, mdlm)(alone, _at(k), x2[i : i + 1])
        assert torch.equal(mixed[i : i + 1], alone)
    assert torch.equal(mixed[1], hidden[1]) and not torch.equal(mixed[0], hidden[0])


def test_gated_save_load_round_trip_is_exact(tmp_path, mdlm, gated):
    """A gated memory saves μ, C_s^{-½}, τ and its named calibration prompts; load is bit-exact,
    edits identically, and recalibrates an insert exactly as the original would."""
    from safetensors import safe_open

    path = gated.save(tmp_path / "gated.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        assert {"keys", "gate.mean", "gate.whiten", "gate_score_max"} <= set(fh.keys())
    loaded = tt.EditMemory.load(path)
    assert loaded.equals(gated) and loaded.gate is not None
    assert loaded.gate.calibration.fact_ids == tuple(f.id for f in CALIBRATION)
    assert torch.equal(loaded.gate.whiten, gated.gate.whiten)
    assert torch.equal(loaded.gate_thresholds, gated.gate_thresholds)
    x = _query(mdlm, ADA[1])
    with gated.install(mdlm):
        a = mdlm.logits(x)
    with loaded.install(mdlm):
        b = mdlm.logits(x)
    assert torch.equal(a, b)
    grown_loaded = loaded.insert(ADA_HELD_OUT, model=mdlm)
    grown = gated.with_config().insert(ADA_HELD_OUT, model=mdlm)
    assert torch.equal(grown_loaded.gate_score_max, grown.gate_score_max)
    assert torch.equal(grown.gate_score_max[:2], gated.gate_score_max)  # old τ_f unmoved
    fresh = tt.EditMemory.build(
        mdlm, ADA + ADA_HELD_OUT, layer=LAYER, subject_gate=True, calibration=CALIBRATION
    )
    torch.testing.assert_close(grown.gate_score_max, fresh.gate_score_max)


def test_memory_refuses_another_model_and_names_both(mdlm, memory):
    """Same architecture, other weights: install and insert are refused with both fingerprints;
    the same weights (also in bfloat16) are accepted."""
    other = R.wrap(R.tiny_mdlm(seed=1))
    fp = tt.editing.model_fingerprint(other)
    assert fp != memory.model_info["fingerprint"]
    with pytest.raises(EditMemoryError, match=f"{memory.model_info['fingerprint']}.*{fp}"):
        memory.install(other)
    with pytest.raises(EditMemoryError, match=fp):
        memory.with_config().insert(FACTS[:1], model=other)
    assert other._edits == []
    twin = R.wrap(R.tiny_mdlm(seed=0))
    assert tt.editing.model_fingerprint(twin) == memory.model_info["fingerprint"]
    half = R.wrap(R.tiny_mdlm(seed=0).to(torch.bfloat16))
    assert tt.editing.model_fingerprint(half) == memory.model_info["fingerprint"]
    with memory.install(twin):
        pass


def test_installing_an_installed_memory_is_an_error(mdlm, memory):
    """A second install of a live memory raises; a with_config copy is independent; after
    removal the memory installs again."""
    with memory.install(mdlm) as handle:
        with pytest.raises(EditMemoryError, match="already installed"):
            memory.install(mdlm)
        assert handle.installed and live_handles(mdlm) == [handle]
        with memory.with_config(alpha=2.0).install(mdlm):
            assert len(mdlm._edits) == 2
    assert not handle.installed and live_handles(mdlm) == [] and mdlm._edits == []
    memory.install(mdlm).remove()
    assert mdlm._edits == []


def test_gate_options_are_validated(mdlm, gated, replicas):
    """the slots gate acts at the answer; unknown choices raise; a gate needs statistics;
    answer slots need [MASK]."""
    with pytest.raises(EditMemoryError, match="apply_at='answer'"):
        EditConfig(layer=0, mode="steer", subject_gate=True, gate_kind="slots")
    with pytest.raises(ValueError, match="gate_kind"):
        EditConfig(layer=0, gate_kind="names")
    with pytest.raises(ValueError, match="apply_at"):
        EditConfig(layer=0, apply_at="subject")
    with pytest.raises(ValueError, match="key_at"):
        EditConfig(layer=0, key_at="object")
    c = EditConfig(layer=2, subject_gate=True, apply_at="answer", key_at="answer", edit_steps=(1,))
    assert EditConfig.from_dict(c.to_dict()) == c and not c.is_paper_form
    plain = tt.EditMemory.build(mdlm, ADA, layer=LAYER)
    with pytest.raises(EditMemoryError, match="calibration"):
        plain.with_config(subject_gate=True)
    with pytest.raises(EditMemoryError, match="token ids"):
        gated.update(torch.randn(1, 4, mdlm.hidden_size))
    with pytest.raises(EditMemoryError, match=r"\[MASK\]"):
        tt.EditMemory.build(replicas["llama"], ADA, layer=1, apply_at="answer")


# --------------------------------------------------------------------------- the token gate


def test_token_matches_match_a_loop():
    """g_f = 1 iff the pattern's ids occur consecutively at valid positions (padding -1)."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 5, (4, 9), generator=g)
    valid = torch.rand(4, 9, generator=g) > 0.2
    patterns = torch.tensor([[1, 2, -1], [3, -1, -1], [0, 4, 1], [-1, -1, -1], [2, 2, -1]])
    got = algebra.token_matches(ids, valid, patterns)
    for b in range(4):
        row, ok = ids[b].tolist(), valid[b].tolist()
        for f, pat in enumerate(patterns.tolist()):
            pat = [p for p in pat if p >= 0]
            want = bool(pat) and any(
                row[j : j + len(pat)] == pat and all(ok[j : j + len(pat)])
                for j in range(9 - len(pat) + 1)
            )
            assert bool(got[b, f]) == want, (b, f)


@pytest.fixture(scope="module")
def token_gated(mdlm):
    return tt.EditMemory.build(
        mdlm, ADA, layer=LAYER, alpha=2.0, lam=0.1, subject_gate=True, gate_kind="tokens",
        apply_at="answer", key_at="answer",
    )  # fmt: skip


def test_token_gate_needs_no_calibration_and_opens_only_on_the_subject(mdlm, token_gated):
    """No calibration statistics; the gate opens on every question naming the subject (also
    held-out ones), never on others, whose logits and trajectories stay bit-identical."""
    assert token_gated.gate is None and token_gated.subject_tokens is not None
    assert token_gated.gate_blind == () and "tokens" in repr(token_gated)
    for f in ADA + ADA_HELD_OUT:
        x = _query(mdlm, f)
        assert (token_gated.gate_scores(_site(mdlm, x), x)[0] > 0.5).all(), f.id
    base = {f.id: mdlm.logits(_query(mdlm, f)) for f in ADA_HELD_OUT + CALIBRATION}
    others = CALIBRATION[:3]
    ref = tt.diffuse(mdlm, others, steps=4)
    with token_gated.install(mdlm):
        assert not torch.equal(mdlm.logits(_query(mdlm, ADA_HELD_OUT[0])), base["ada-year"])
        for f in CALIBRATION:  # "lyra vell" shares the surname: no full-name match
            assert torch.equal(mdlm.logits(_query(mdlm, f)), base[f.id]), f.id
        out = tt.diffuse(mdlm, others, steps=4)
    assert torch.equal(out.tokens, ref.tokens)
    assert torch.equal(out.target_logprobs, ref.target_logprobs)


def test_token_gate_reads_the_prompt_only_inside_the_loop(mdlm, token_gated):
    """A subject written into an *answer* does not open the gate in the diffusion loop (the
    loop's forward context carries the answer start); a stand-alone forward scans every token."""
    f = tt.Fact(
        subject="kess", question="who was the writer of kess", answer="ada vell porto", id="w"
    )
    prompt, answer = mdlm.encode(f.question, f.answer)
    filled = torch.tensor([prompt + answer])
    assert (token_gated.gate_scores(_site(mdlm, filled), filled)[0] > 0.5).any()
    hidden = torch.randn(1, filled.shape[1], mdlm.hidden_size)
    filled[0, -1] = mdlm.mask_token_id  # one slot still to decode: the edit would act there
    inside = hidden.clone()
    EditHandle(token_gated, mdlm)(inside, ForwardContext(step=1, answer_start=len(prompt)), filled)
    outside = hidden.clone()
    EditHandle(token_gated, mdlm)(outside, ForwardContext(step=1, answer_start=None), filled)
    assert torch.equal(inside, hidden) and not torch.equal(outside, hidden)
    assert mdlm.context is STANDALONE
    x = _query(mdlm, f)
    ref = mdlm.denoise(x, answer_start=len(prompt), steps=2)
    assert mdlm.context is STANDALONE
    with token_gated.install(mdlm):
        out = mdlm.denoise(x, answer_start=len(prompt), steps=2)
    assert torch.equal(out.states, ref.states)


def test_token_gated_round_trip_insert_and_remove(tmp_path, mdlm, token_gated):
    """subject_tokens save and load exactly; inserts pad patterns of another length; a fresh
    build of the same facts equals the grown memory."""
    loaded = tt.EditMemory.load(token_gated.save(tmp_path / "tok.safetensors"))
    assert loaded.equals(token_gated)
    assert torch.equal(loaded.subject_tokens, token_gated.subject_tokens)
    kess = [FACTS[2]]  # a one-token subject next to two-token ones
    grown = token_gated.with_config().insert(kess, model=mdlm)
    assert grown.subject_tokens.shape == (3, 2) and int(grown.subject_tokens[2, 1]) == -1
    fresh = tt.EditMemory.build(
        mdlm, ADA + kess, layer=LAYER, alpha=2.0, lam=0.1, subject_gate=True,
        gate_kind="tokens", apply_at="answer", key_at="answer",
    )  # fmt: skip
    assert torch.equal(fresh.subject_tokens, grown.subject_tokens)
    x = _query(mdlm, FACTS[2])
    with grown.install(mdlm):
        a = mdlm.logits(x)
    with fresh.install(mdlm):
        b = mdlm.logits(x)
    assert torch.equal(a, b)
    shrunk = grown.without("kess")
    assert torch.equal(shrunk.subject_tokens, token_gated.subject_tokens[:, :2])
    assert grown.subject_tokens.shape == (3, 2)


def test_gate_kind_is_validated(mdlm):
    with pytest.raises(ValueError, match="gate_kind"):
        EditConfig(layer=0, gate_kind="regex")
    with pytest.raises(EditMemoryError, match="token ids"):
        _synthetic(3, 4).with_config(subject_gate=True, gate_kind="tokens")


def test_block_ridge_matches_per_group_solves():
    """factorize_blocks: each group's rows are (K_g K_gᵀ + λ_g I)⁻¹ K_g with the group's own
    λ_g = λ·mean‖k‖² (checked with torch.linalg.solve); one group is factorize's G⁻¹K."""
    g = torch.Generator().manual_seed(11)
    keys = torch.randn(7, 5, generator=g)
    groups = torch.tensor([0, 1, 0, 2, 1, 0, 2])
    got = algebra.factorize_blocks(keys, 0.3, groups)
    k = keys.double()
    for label in (0, 1, 2):
        idx = (groups == label).nonzero().flatten()
        kg = k[idx]
        lam = 0.3 * float((kg * kg).sum(-1).mean())
        want = torch.linalg.solve(kg @ kg.T + lam * torch.eye(len(idx), dtype=torch.float64), kg)
        torch.testing.assert_close(got[idx], want)
    one = algebra.factorize_blocks(keys, 0.3, torch.zeros(7, dtype=torch.int64))
    torch.testing.assert_close(one, algebra.factorize(keys, 0.3)[1])


def test_per_subject_ridge_does_not_dilute_a_person(mdlm):
    """ridge_blocks='subject': a person's edit is the same whoever else is in the memory;
    the memory-wide ridge changes it."""
    kw = dict(layer=LAYER, alpha=2.0, lam=0.1, subject_gate=True, gate_kind="tokens",
              apply_at="answer", key_at="answer")  # fmt: skip
    others = [FACTS[1], FACTS[2]]
    x = _query(mdlm, ADA_HELD_OUT[0])
    h = _site(mdlm, x)
    alone = tt.EditMemory.build(mdlm, ADA, ridge_blocks="subject", **kw)
    crowd = tt.EditMemory.build(mdlm, ADA + others, ridge_blocks="subject", **kw)
    torch.testing.assert_close(alone.update(h, x), crowd.update(h, x), atol=1e-5, rtol=1e-5)
    joint = tt.EditMemory.build(mdlm, ADA + others, **kw)
    assert not torch.allclose(joint.update(h, x), alone.update(h, x), atol=1e-4)
    with pytest.raises(EditMemoryError, match="primal map"):
        crowd.with_config(subject_gate=False, apply_at="all").primal_map()


def test_token_gate_ignores_the_answer_in_the_elbo_estimator(mdlm, token_gated):
    """The ELBO estimator leaves some answer tokens visible; a subject written there (a retain
    fact whose answer names the forgotten person) must not open the gate."""
    f = tt.Fact(
        subject="kess", question="who was the writer of kess", answer="ada vell porto", id="w"
    )
    base = tt.answer_logprob(mdlm, [f], estimator="elbo", mc=16)
    with token_gated.install(mdlm):
        edited = tt.answer_logprob(mdlm, [f], estimator="elbo", mc=16)
        forgotten = tt.answer_logprob(mdlm, ADA[:1], estimator="elbo", mc=16)
    assert torch.equal(edited, base)
    assert not torch.equal(forgotten, tt.answer_logprob(mdlm, ADA[:1], estimator="elbo", mc=16))
    assert mdlm.context is STANDALONE
