"""Result dataclasses: Eq. 4, normalisation, selection/concat, exact save/load round trips."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import pytest
import torch

from tie_tracing.core.errors import ShapeError
from tie_tracing.core.results import (
    Coordinate,
    PositionalResult,
    ResultFileError,
    TIEResult,
    tie_from_ie,
)


def slow_tie(ie: torch.Tensor, decay: float, steps: list[int]) -> torch.Tensor:
    """Eq. 4 written as loops, one cell at a time."""
    *lead, n_k, n_m, n_t = ie.shape
    flat = ie.reshape(-1, n_k, n_m, n_t)
    out = torch.empty(flat.shape[0], n_k, n_m, dtype=torch.float64)
    for b in range(flat.shape[0]):
        for ki, k in enumerate(steps):
            for m in range(n_m):
                num = sum(decay ** (kp - k) * float(flat[b, ki, m, kp]) for kp in range(k, n_t))
                den = sum(decay ** (kp - k) for kp in range(k, n_t))
                out[b, ki, m] = num / den
    return out.reshape(*lead, n_k, n_m)


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    )


def assert_same_result(a, b) -> None:
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert bitwise_equal(x, y), f.name
        else:
            assert x == y, f.name
            assert type(x) is type(y), f.name


@pytest.mark.parametrize("decay", [0.5, 1.0, 0.9])
def test_tie_from_ie_matches_loop_reference(decay):
    """The vectorised Eq. 4 equals the loop over later steps, for every cell."""
    g = torch.Generator().manual_seed(1)
    ie = torch.randn(2, 3, 5, 2, 5, generator=g, dtype=torch.float64)
    got = tie_from_ie(ie, decay)
    assert got.shape == (2, 3, 5, 2)
    torch.testing.assert_close(got, slow_tie(ie, decay, list(range(5))), rtol=0, atol=1e-12)


def test_tie_from_ie_ignores_entries_before_the_patched_step_and_handles_step_subsets():
    """Values at later_step < step (NaN or garbage) never enter TIE; step labels are honoured."""
    ie = torch.randn(4, 3, 8, dtype=torch.float64)  # [step=4 patched at 1,3,5,7, module, T=8]
    steps = [1, 3, 5, 7]
    ref = slow_tie(ie[None], 0.5, steps)[0]
    garbage = ie.clone()
    for i, k in enumerate(steps):
        garbage[i, :, :k] = float("nan") if i % 2 else 1e9
    torch.testing.assert_close(tie_from_ie(garbage, 0.5, steps=steps), ref)
    last = tie_from_ie(ie, 0.5, steps=steps)[-1]
    torch.testing.assert_close(last, ie[-1, :, 7])  # last step: only itself


def test_tie_from_ie_nan_policy():
    """'propagate' keeps a NaN later step; 'omit' renormalises the decay weights without it."""
    ie = torch.tensor([[[1.0, float("nan"), 3.0]]])  # [step=1, module=1, T=3]
    assert torch.isnan(tie_from_ie(ie, 0.5)).all()
    got = tie_from_ie(ie, 0.5, nan_policy="omit")
    assert got.item() == pytest.approx((1.0 + 0.25 * 3.0) / 1.25)


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5])
def test_tie_from_ie_rejects_bad_decay(decay):
    """γ must lie in (0, 1]."""
    with pytest.raises(ValueError, match="decay"):
        tie_from_ie(torch.zeros(2, 1, 2), decay)


def test_synthetic_is_consistent_and_values_dims():
    """values is tie, dims name its axes, and tie is Eq. 4 of ie."""
    r = TIEResult.synthetic(n_facts=2, n_layers=3, n_steps=4)
    assert r.values is r.tie
    assert r.dims == ("fact", "layer", "step", "module")
    assert r.values.shape == (2, 3, 4, 3)
    torch.testing.assert_close(r.tie, tie_from_ie(r.ie, r.decay))
    assert torch.isnan(r.ie[:, :, 2, :, :2]).all()


def test_mean_is_nan_aware():
    """mean() averages over facts and skips a fact's NaN cell."""
    r = TIEResult.synthetic(n_facts=3, n_layers=2, n_steps=3)
    tie = r.tie.clone()
    tie[0, 0, 0, 0] = float("nan")
    r2 = dataclasses.replace(r, tie=tie)
    m = r2.mean()
    assert m.shape == (2, 3, 3)
    assert m[0, 0, 0] == pytest.approx(float(tie[1:, 0, 0, 0].mean()))
    torch.testing.assert_close(m[1], r.tie[:, 1].mean(0))
    assert torch.equal(r2.mean_over_facts(), m)


def test_normalized_divides_each_later_step_and_recomputes_tie():
    """normalized(): ie / (LP_clean - LP_corrupt) per later step, tie = Eq. 4 of that."""
    r = TIEResult.synthetic(n_facts=2, n_layers=2, n_steps=4)
    n = r.normalized()
    gap = r.lp_clean - r.lp_corrupt
    torch.testing.assert_close(n.ie, r.ie / gap[:, None, None, None, :], equal_nan=True)
    torch.testing.assert_close(n.tie, tie_from_ie(n.ie, r.decay))
    assert n.config["normalized"] is True and r.config["normalized"] is False
    assert n.is_normalized and n.normalized() is n
    assert torch.equal(n.lp_clean, r.lp_clean)


def test_normalized_full_restoration_is_one():
    """A patch that restores the clean LP at every later step has normalised TIE 1."""
    r = TIEResult.synthetic(n_facts=2, n_layers=2, n_steps=3)
    gap = r.lp_clean - r.lp_corrupt
    ie = gap[:, None, None, None, :].expand_as(r.ie).clone()
    ie = torch.where(torch.isnan(r.ie), r.ie, ie)
    full = dataclasses.replace(r, ie=ie, tie=tie_from_ie(ie, r.decay))
    torch.testing.assert_close(full.normalized().tie, torch.ones_like(r.tie))


def test_normalized_vanishing_gap_warns_naming_fact():
    """A zero clean-corrupt gap gives NaN with a warning that names the fact."""
    r = TIEResult.synthetic(n_facts=2, n_layers=2, n_steps=3)
    lp_corrupt = r.lp_corrupt.clone()
    lp_corrupt[1, 2] = r.lp_clean[1, 2]
    r = dataclasses.replace(r, lp_corrupt=lp_corrupt)
    with pytest.warns(RuntimeWarning, match="'f1' at later steps \\[2\\]"):
        n = r.normalized()
    assert torch.isnan(n.ie[1, ..., 2]).all()
    assert torch.isnan(n.tie[1]).all()  # propagate: every step aggregates step 2
    assert not torch.isnan(n.tie[0]).any()
    with pytest.warns(RuntimeWarning):
        o = r.normalized(nan_policy="omit")
    assert not torch.isnan(o.tie[1, :, :2]).any() and torch.isnan(o.tie[1, :, 2]).all()


def test_select_facts_by_index_id_and_mask():
    """select_facts keeps the chosen facts, in order, in every per-fact field."""
    r = TIEResult.synthetic(n_facts=3)
    s = r.select_facts(["f2", "f0"])
    assert s.fact_ids == ("f2", "f0") and s.answers == (r.answers[2], r.answers[0])
    assert bitwise_equal(s.ie[0], r.ie[2]) and torch.equal(s.corrupt_tokens[1], r.corrupt_tokens[0])
    assert r.select_facts(1).fact_ids == ("f1",)
    assert r.select_facts(torch.tensor([True, False, True])).fact_ids == ("f0", "f2")
    with pytest.raises(KeyError, match="nope"):
        r.select_facts(["nope"])
    with pytest.raises(IndexError):
        r.select_facts([5])


def test_concat_inverts_select_and_pads_tokens():
    """concat of disjoint selections rebuilds the result; shorter answers are padded with -1."""
    r = TIEResult.synthetic(n_facts=3)
    back = TIEResult.concat([r.select_facts([0, 1]), r.select_facts([2])])
    assert_same_result(back, r)
    short = TIEResult.synthetic(n_facts=1, answer_len=1, seed=3)
    short = dataclasses.replace(short, fact_ids=("s0",))
    both = TIEResult.concat([r, short])
    assert both.clean_tokens.shape == (4, 8, 3)
    assert (both.clean_tokens[3, :, 1:] == -1).all()
    assert (both.corrupt_tokens[3, :, :, 1:] == -1).all()


def test_concat_refuses_disagreeing_parts_and_merges_per_run_keys():
    """Different labels or settings are a clear error; a differing nu becomes a list."""
    r = TIEResult.synthetic(n_facts=2)
    other = TIEResult.synthetic(n_facts=2, decay=0.9)
    other = dataclasses.replace(other, fact_ids=("x", "y"))
    with pytest.raises(ValueError, match="config\\['decay'\\] differs"):
        TIEResult.concat([r, other])
    fewer = dataclasses.replace(TIEResult.synthetic(n_facts=2, n_layers=3), fact_ids=("x", "y"))
    with pytest.raises(ValueError, match="layers"):
        TIEResult.concat([r, fewer])
    a = dataclasses.replace(r, config=dict(r.config, nu=0.1))
    b = dataclasses.replace(r, config=dict(r.config, nu=0.2), fact_ids=("x", "y"))
    assert TIEResult.concat([a, b]).config["nu"] == [0.1, 0.2]
    a = dataclasses.replace(
        r, config=dict(r.config, unknown_facts=["f0"], engine_stats={"rows": 1})
    )
    b = dataclasses.replace(
        r, config=dict(r.config, unknown_facts=[], engine_stats={"rows": 2}), fact_ids=("x", "y")
    )
    merged = TIEResult.concat([a, b]).config
    assert merged["unknown_facts"] == ["f0"] and merged["engine_stats"] == [
        {"rows": 1},
        {"rows": 2},
    ]


def test_save_load_round_trip_is_exact(tmp_path):
    """save then load gives bitwise-equal tensors (NaN included) and equal metadata."""
    r = TIEResult.synthetic(n_facts=2, n_noise=2)
    r = dataclasses.replace(
        r, config=dict(r.config, modules=("resid", "attn", "mlp"), nu=float("inf"))
    )
    path = r.save(tmp_path / "sub" / "trace.safetensors")
    back = TIEResult.load(path)
    assert_same_result(back, r)
    assert back.config["modules"] == ["resid", "attn", "mlp"]  # normalised at construction
    assert sorted(os.listdir(path.parent)) == ["trace.safetensors"]  # no temp file left
    r.normalized().save(path)  # overwrite in place
    assert TIEResult.load(path).is_normalized


def test_load_rejects_truncated_corrupt_and_foreign_files(tmp_path):
    """Truncated, garbage or another kind's files raise ResultFileError with the path."""
    path = TIEResult.synthetic(n_facts=1).save(tmp_path / "a.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ResultFileError, match="cut.safetensors"):
        TIEResult.load(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file at all")
    with pytest.raises(ResultFileError):
        TIEResult.load(tmp_path / "junk.safetensors")
    with pytest.raises(ResultFileError, match="PositionalResult"):
        TIEResult.load(PositionalResult.synthetic().save(tmp_path / "p.safetensors"))
    with pytest.raises(FileNotFoundError):
        TIEResult.load(tmp_path / "missing.safetensors")


def test_construction_validates_shapes_and_metadata():
    """Inconsistent shapes, missing decay, unknown or non-JSON config entries, bad dtypes and
    repeated ids are refused."""
    r = TIEResult.synthetic(n_facts=2, n_layers=2, n_steps=3)
    with pytest.raises(ShapeError, match="ie must be"):
        dataclasses.replace(r, ie=r.ie[:, :1])
    with pytest.raises(ShapeError, match="layers"):
        dataclasses.replace(r, layers=(0, 1, 2))
    with pytest.raises(ShapeError, match="answers"):
        dataclasses.replace(r, answers=("x",))
    with pytest.raises(ValueError, match="decay"):
        dataclasses.replace(r, config={"n_noise": 1})
    with pytest.raises(TypeError, match="integer"):
        dataclasses.replace(r, clean_tokens=r.clean_tokens.float())
    with pytest.raises(ValueError, match="unique"):
        dataclasses.replace(r, fact_ids=("a", "a"))
    with pytest.raises(ValueError, match="no field 'bad'"):
        dataclasses.replace(r, config=dict(r.config, bad=1))
    with pytest.raises(ValueError, match="'engine_stats' is not JSON"):
        dataclasses.replace(r, config=dict(r.config, engine_stats=object()))


def test_repr_shows_what_defines_the_result():
    """repr names the dims, sizes, modules, decay and model."""
    text = repr(TIEResult.synthetic(n_facts=2, n_layers=3, n_steps=4))
    for part in ("fact=2", "layer=3", "step=4", "module=3", "decay=0.5", "'synthetic'", "resid"):
        assert part in text


def test_positional_result_conventions(tmp_path):
    """PositionalResult: values/dims, effect, select, NaN-padded concat, exact round trip."""
    p = PositionalResult.synthetic(n_facts=3, n_layers=2)
    assert p.dims == ("fact", "layer", "position", "module")
    assert p.restored is p.prob and p.with_metric("lp").restored is p.lp
    torch.testing.assert_close(p.values, p.effect(), equal_nan=True)  # .values is the effect
    assert torch.isnan(p.prob[0, :, 5:]).all()  # fact 0 has 5 tokens, padded to 7
    eff = p.with_metric("lp").effect()
    torch.testing.assert_close(eff, p.lp - p.lp_corrupt[:, None, None, None], equal_nan=True)
    norm = p.effect(normalized=True)
    gap = p.lp_clean.exp() - p.lp_corrupt.exp()
    torch.testing.assert_close(
        norm,
        (p.prob - p.lp_corrupt.exp()[:, None, None, None]) / gap[:, None, None, None],
        equal_nan=True,
    )
    assert p.last_subject_position == (2, 2, 2)
    short = p.select_facts([0])
    assert short.prob.shape[2] == 7 and short.tokens == (p.tokens[0],)
    back = PositionalResult.concat([p.select_facts([1, 2]), p.select_facts([0])])
    assert back.fact_ids == ("f1", "f2", "f0")
    torch.testing.assert_close(back.prob[2], p.prob[0], equal_nan=True)
    assert p.mean().shape == (2, 7, 3)
    assert_same_result(PositionalResult.load(p.save(tmp_path / "p.safetensors")), p)
    assert "position=7" in repr(p)
    with pytest.raises(ValueError, match="subject positions"):
        dataclasses.replace(p, subject_positions=((1, 9), (1, 2), (1, 2)))


def test_coordinate_labels_and_index():
    """Coordinate holds labels; index maps them back into scores; to_dict is JSON."""
    s = torch.zeros(2, 3, 2)
    c = Coordinate(
        layer=10,
        step=4,
        module="mlp",
        score=1.0,
        scores=s,
        beta=0.0,
        layers=(5, 10),
        steps=(0, 2, 4),
        modules=["resid", "mlp"],
    )
    assert c.index == (1, 2, 1) and c.values is s and c.modules == ("resid", "mlp")
    assert json.loads(json.dumps(c.to_dict()))["module"] == "mlp"
    with pytest.raises(ShapeError):
        dataclasses.replace(c, scores=torch.zeros(2, 2, 2))
    with pytest.raises(ValueError):
        dataclasses.replace(c, layer=3)
    assert "layer=10" in repr(c) and not math.isnan(c.score)


def _with_unknown(r, unknown):
    return dataclasses.replace(r, config=dict(r.config, unknown_facts=list(unknown)))


def test_known_only_filters_unknown_facts_and_mean_uses_it():
    """known_only() = select_facts(known); mean() averages it unless include_unknown=True."""
    r = _with_unknown(TIEResult.synthetic(n_facts=3, n_layers=2, n_steps=3), ["f1"])
    assert r.known.tolist() == [True, False, True] and r.n_known == 2
    k = r.known_only()
    assert k.fact_ids == ("f0", "f2") and torch.equal(k.tie, r.tie[[0, 2]])
    assert torch.equal(k.lp_clean, r.lp_clean[[0, 2]])
    assert k.known.all() and k.known_only() is k
    torch.testing.assert_close(r.mean(), r.tie[[0, 2]].mean(0))
    torch.testing.assert_close(r.mean(include_unknown=True), r.tie.mean(0))
    assert torch.equal(r.mean_over_facts(), r.mean())
    plain = TIEResult.synthetic(n_facts=2)
    assert plain.known_only() is plain  # every fact known: nothing to filter


def test_known_only_with_no_known_fact_keeps_all_and_warns():
    """When the model knows none of the facts, all are used, with a warning."""
    r = _with_unknown(TIEResult.synthetic(n_facts=2, n_layers=2, n_steps=3), ["f0", "f1"])
    with pytest.warns(UserWarning, match="does not know any of the 2"):
        assert r.known_only() is r
    with pytest.warns(UserWarning, match="does not know any"):
        torch.testing.assert_close(r.mean(), r.tie.mean(0))


def test_positional_result_known_only_and_mean():
    """PositionalResult shares known/known_only with TIEResult; its mean() leaves unknown out."""
    p = PositionalResult.synthetic(n_facts=3, n_layers=2)
    p = dataclasses.replace(p, config=dict(p.config, unknown_facts=["f0"]))
    assert p.known.tolist() == [False, True, True]
    k = p.known_only()
    assert k.fact_ids == ("f1", "f2") and k.tokens == p.tokens[1:]
    eff = p.effect()
    torch.testing.assert_close(p.mean(), torch.nanmean(eff[1:], 0), equal_nan=True)
    torch.testing.assert_close(p.mean(include_unknown=True), torch.nanmean(eff, 0), equal_nan=True)


# ----------------------------------------------------------------------------- one serialiser


def _deep_equal(x, y) -> bool:
    """Exact, NaN-aware equality through tensors, dataclasses, dicts and sequences."""
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and bitwise_equal(x, y)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return type(x) is type(y) and all(
            _deep_equal(getattr(x, f.name), getattr(y, f.name)) for f in dataclasses.fields(x)
        )
    if isinstance(x, dict):
        return (
            isinstance(y, dict) and list(x) == list(y) and all(_deep_equal(x[k], y[k]) for k in x)
        )
    if isinstance(x, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(map(_deep_equal, x, y))
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x):
        return math.isnan(y)
    return type(x) is type(y) and x == y


def _every_result_type():
    """One instance of every result type users save (built from synthetic traces)."""
    import tie_tracing as tt
    from tie_tracing.analysis.compare import LocalisationSummary, Rows
    from tie_tracing.core.sampler import DiffusionResult
    from tie_tracing.evaluation.metrics import Evaluation, Metric, PairedTest

    r = TIEResult.synthetic(n_facts=3, n_layers=3, n_steps=4)
    other = TIEResult.synthetic(n_facts=3, n_layers=3, n_steps=4, seed=1)
    p = PositionalResult.synthetic(n_facts=2, n_layers=2)
    metric = Metric(-1.5, -2.0, -1.0, 3, torch.tensor([-1.0, math.nan, -2.0], dtype=torch.float64))
    evaluation = Evaluation(
        metrics={"forget": {"logprob": metric, "exact_match": Metric(0.5)}},
        fact_ids={"forget": ("a", "b", "c")},
        answers={"forget": ("x", "y", "z")},
        config={"estimator": "masked", "seed": 0},
    )
    diffusion = DiffusionResult(
        answers=["lisbon", "paris"],
        tokens=torch.arange(24).reshape(2, 3, 4),
        target_logprobs=torch.randn(2, 3),
        prompt_lengths=(2, 2),
        answer_lengths=(2, 2),
        config={"steps": 3, "mask_token_id": 3},
        object_offsets=((0,), (0, 1)),
    )
    summary = tt.analysis.localisation_summary(p, module="resid")
    assert isinstance(summary, LocalisationSummary)
    return {
        "TIEResult": r,
        "PositionalResult": p,
        "Coordinate": tt.select_coordinate(r),
        "BetaTradeoff": tt.analysis.beta_tradeoff(r, other, [0.0, 0.5]),
        "SelectionStability": tt.analysis.selection_stability(r, n_boot=5),
        "PerFactOptima": tt.analysis.per_fact_optima(r),
        "SeedStability": tt.analysis.seed_stability(
            [r, dataclasses.replace(r, seeds=(1,), ie=2 * r.ie, tie=2 * r.tie)]
        ),
        "LocalisationStats": tt.analysis.localisation_stats(r),
        "LocalisationSummary": summary,
        "Rows": Rows(({"a": 1, "b": math.nan}, {"a": 2, "b": 0.5}), kind="demo"),
        "Evaluation": evaluation,
        "Metric": metric,
        "PairedTest": PairedTest(0.1, 2.0, 0.04, 5),
        "DiffusionResult": diffusion,
    }


RESULT_TYPES = (
    "TIEResult", "PositionalResult", "Coordinate", "BetaTradeoff", "SelectionStability",
    "PerFactOptima", "SeedStability", "LocalisationStats", "LocalisationSummary", "Rows",
    "Evaluation", "Metric", "PairedTest", "DiffusionResult",
)  # fmt: skip


def test_the_table_lists_every_result_type():
    """RESULT_TYPES names exactly the instances _every_result_type builds."""
    assert tuple(_every_result_type()) == RESULT_TYPES


@pytest.mark.parametrize("name", RESULT_TYPES)
def test_every_result_type_round_trips_through_one_serialiser(name, tmp_path):
    """obj.save(path) (nnsight imported, so its global object.save is mounted) writes one
    safetensors file that type(obj).load reads back exactly; another type refuses it."""
    import nnsight  # noqa: F401  (mounts .save on every object)
    from safetensors import safe_open

    obj = _every_result_type()[name]
    path = obj.save(tmp_path / f"{name}.safetensors")  # not nnsight's save
    with safe_open(str(path), framework="pt") as fh:
        assert json.loads(fh.metadata()["tie_tracing"])["kind"] == name
    back = type(obj).load(path)
    assert _deep_equal(obj, back), name
    wrong = Coordinate if name != "Coordinate" else TIEResult
    with pytest.raises(ResultFileError, match=f"holds an? {name}, not a"):
        wrong.load(path)


@pytest.mark.parametrize("name", RESULT_TYPES)
def test_files_naming_the_modules_of_the_flat_layout_still_load(name, tmp_path):
    """A file written before the layered layout names its nested classes by their old modules
    (``tie_tracing.results:Coordinate``); it loads into an equal object."""
    from safetensors import safe_open
    from safetensors.torch import save

    from tie_tracing.core._io import MOVED_MODULES

    obj = _every_result_type()[name]
    path = obj.save(tmp_path / "new.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        header = fh.metadata()["tie_tracing"]
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    old_header = header
    for old, new in MOVED_MODULES.items():
        old_header = old_header.replace(f'"{new}:', f'"{old}:')
    newer = {"tie_tracing.core.provenance"}  # modules that did not exist in the flat layout
    nested = re.findall(r'"__dataclass__": "([^:"]+):', header)
    unmoved = [m for m in nested if m not in MOVED_MODULES.values() and m not in newer]
    assert not unmoved, f"nested classes of unmoved modules: {unmoved}"
    old_path = tmp_path / "old.safetensors"
    old_path.write_bytes(save(tensors, metadata={"tie_tracing": old_header}))
    assert _deep_equal(type(obj).load(old_path), obj), name


def test_select_coordinate_save_is_not_nnsights(tmp_path):
    """The issue's case: tt.select_coordinate(r).save(path) writes a file (nnsight's global
    save would raise 'save() was called outside a trace')."""
    import nnsight

    import tie_tracing as tt

    c = tt.select_coordinate(TIEResult.synthetic())
    assert type(c).save is not nnsight.save
    out = c.save(tmp_path / "c.safetensors")
    assert Coordinate.load(out).to_dict() == c.to_dict()


def test_truncated_result_file_names_its_path(tmp_path):
    """A truncated result file is a ResultFileError that names the file."""
    path = TIEResult.synthetic().save(tmp_path / "r.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ResultFileError, match="r.safetensors.*truncated"):
        TIEResult.load(path)


def test_to_dataframe_long_tables():
    """to_dataframe: one row per cell with labelled axes; results with rows use them."""
    pd = pytest.importorskip("pandas")
    r = TIEResult.synthetic(n_facts=2, n_layers=3, n_steps=4)
    df = r.to_dataframe()
    assert isinstance(df, pd.DataFrame) and len(df) == 2 * 3 * 4 * 3
    assert list(df.columns) == ["fact", "layer", "step", "module", "value"]
    cell = df[(df.fact == "f1") & (df.layer == 2) & (df.step == 3) & (df.module == "mlp")]
    assert float(cell.value.iloc[0]) == float(r.tie[1, 2, 3, 2])
    p = PositionalResult.synthetic(n_facts=2, n_layers=2).to_dataframe()
    assert set(p.columns) == {"fact", "layer", "position", "module", "value"}
    rows = _every_result_type()["Evaluation"].to_dataframe()
    assert list(rows.metric) == ["logprob", "exact_match"]


def test_to_dataframe_without_pandas_names_the_extra(monkeypatch):
    """Without pandas, to_dataframe raises an ImportError naming the [pandas] extra."""
    import sys

    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"tie_tracing\[pandas\]"):
        TIEResult.synthetic().to_dataframe()


def test_files_of_the_earlier_flat_format_still_load(tmp_path):
    """A result written in format 1 (tensors by field name, other fields as plain JSON) loads
    into an equal result, so resumable sweeps and saved traces of earlier releases still open."""
    from safetensors.torch import save_file

    r = TIEResult.synthetic(n_facts=2, n_layers=2, n_steps=3)
    tensors, fields = {}, {}
    for f in dataclasses.fields(r):
        value = getattr(r, f.name)
        if isinstance(value, torch.Tensor):
            tensors[f.name] = value.contiguous()
        else:  # format 1 kept the config as a plain dict
            fields[f.name] = value.to_dict() if f.name == "config" else value
    meta = {"kind": "TIEResult", "format": 1, "fields": fields}
    path = tmp_path / "old.safetensors"
    save_file(tensors, str(path), metadata={"tie_tracing": json.dumps(meta)})
    assert _deep_equal(TIEResult.load(path), r)


def test_reprs_say_what_the_object_is():
    """A TIEResult's repr names its reading (lp, target) and unit, never "raw" for a frozen
    result; a normalised one says so; a Fact's repr shows its object."""
    import tie_tracing as tt

    r = TIEResult.synthetic(n_facts=2)
    text = repr(r)
    assert "raw" not in text and "in nats" in text and "lp=frozen, target=answer" in text
    assert "normalised (clean = 1, corrupted = 0)" in repr(r.normalized())
    fact = tt.Fact("ada vell", "where was ada vell born", "in lisbon", object="lisbon", id="a")
    assert "object='lisbon'" in repr(fact)
