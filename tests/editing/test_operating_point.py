"""Explicit edit-memory configuration: a build reads no file; a shipped operating point is a
validated value used only when passed."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings

import pytest

import tie_tracing as tt
from tie_tracing.editing import EditConfig, EditMemoryError, EditMemoryWarning, OperatingPoint

ADA = [
    tt.Fact(subject="ada vell", question="where was ada vell born", answer="lisbon", id="ada"),
    tt.Fact(subject="ada vell", question="when was ada vell born", answer="1962", id="ada-2"),
]
MARA = tt.Fact(
    subject="mara tov", question="what book was mara tov the writer of", answer="orion", id="mara"
)
CALIBRATION_IDS = [f.id for f in tt.load_facts("tiny", "retain")[:6]]


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _record(model, **changes) -> dict:
    """A complete, valid gated operating point for ``model`` (its own fingerprint)."""
    base = {
        "layer": 1, "module": "resid", "alpha": 3.0, "lam": 0.5, "q": 16, "steps": None,
        "subject_gate": True, "gate_kind": "cosine", "gate_margin": 0.1, "gate_shrinkage": 0.2,
        "apply_at": "answer", "key_at": "answer",
        "calibration": {"corpus": "tiny", "split": "retain", "ids": CALIBRATION_IDS},
        "fingerprint": tt.editing.model_fingerprint(model),
        "command": "python experiments/edit_tune_gate.py --write",
        "measured": {"d_forget_lp": -3.0, "d_retain_lp": -0.01, "estimator": "masked"},
        "rule": "strongest", "date": "2025-01-01",
    }  # fmt: skip
    return {k: v for k, v in (base | changes).items() if v is not ...}


@contextlib.contextmanager
def shipping(model, record):
    """``model`` with ``record`` as the operating point of its ``tie_tracing.json``."""
    model.info["operating_point"] = record
    try:
        yield model
    finally:
        del model.info["operating_point"]


def test_build_reads_no_file(mdlm):
    """With a stored operating point, build(layer=...) is still the paper's memory (EditConfig's
    defaults); without layer the error says what to pass and names the shipped point's path."""
    with shipping(mdlm, _record(mdlm)):
        mem = tt.EditMemory.build(mdlm, ADA, layer=2)
        assert mem.config == EditConfig(layer=2) and mem.config.is_paper_form and mem.gate is None
        with pytest.raises(EditMemoryError, match="needs a site") as err:
            tt.EditMemory.build(mdlm, ADA, alpha=2.0)
        assert "tt.editing.OperatingPoint.shipped(model)" in str(err.value)
    with pytest.raises(EditMemoryError, match="needs a site") as err:
        tt.EditMemory.build(mdlm, ADA)
    assert "layer=" in str(err.value) and "OperatingPoint" not in str(err.value)


def test_config_with_overrides(mdlm):
    """build(config, **overrides) = build(**fields): the overrides replace the config's fields;
    None leaves a field (q and edit_steps excepted: dense, every step)."""
    config = EditConfig(layer=1, alpha=2.0, lam=0.1, q=2, edit_steps=(0, 1))
    via_config = tt.EditMemory.build(mdlm, ADA, config)
    via_keywords = tt.EditMemory.build(
        mdlm, ADA, layer=1, alpha=2.0, lam=0.1, q=2, edit_steps=[1, 0]
    )
    assert via_config.config == config and via_config.equals(via_keywords)
    changed = tt.EditMemory.build(mdlm, ADA, config, lam=0.5, alpha=None, q=None, edit_steps=None)
    assert changed.config == dataclasses.replace(config, lam=0.5, q=None, edit_steps=None)
    assert tt.EditMemory.build(mdlm, ADA, config, layer=2).config.layer == 2


def test_config_errors_name_the_fix(mdlm):
    """A config of another type, an unknown setting and an explicit q beyond N are clear errors."""
    with pytest.raises(TypeError, match="layer=3"):
        tt.EditMemory.build(mdlm, ADA, 3)
    with pytest.raises(TypeError, match=r"OperatingPoint\.from_dict"):
        tt.EditMemory.build(mdlm, ADA, {"layer": 1})
    with pytest.raises(TypeError, match="keywords"):
        tt.EditMemory.build(mdlm, ADA, "paper")
    with pytest.raises(TypeError, match="no setting 'alhpa' \\(did you mean 'alpha'\\?\\)"):
        tt.EditMemory.build(mdlm, ADA, layer=1, alhpa=2.0)
    with pytest.raises(EditMemoryError, match=r"q=3 must be an integer with 1 ≤ q ≤ N=2"):
        tt.EditMemory.build(mdlm, ADA, EditConfig(layer=1), q=3)
    with pytest.raises(EditMemoryError, match="calibration prompts"):
        tt.EditMemory.build(mdlm, ADA, layer=1, subject_gate=True)


def test_shipped_point_builds_its_memory(mdlm):
    """OperatingPoint.shipped brings the config, calibration prompts and shrinkage; its q is a
    ceiling; overrides apply on top; to_dict/from_dict round-trip."""
    with shipping(mdlm, _record(mdlm)):
        assert OperatingPoint.ships_with(mdlm)
        point = OperatingPoint.shipped(mdlm)
    assert not OperatingPoint.ships_with(mdlm)
    c = point.config
    assert (c.layer, c.alpha, c.lam, c.q, c.cap_q, c.subject_gate, c.gate_margin) == (
        1, 3.0, 0.5, 16, True, True, 0.1,
    )  # fmt: skip
    assert [f.id for f in point.calibration] == CALIBRATION_IDS and point.gate_shrinkage == 0.2
    assert "edit_tune_gate.py" in repr(point) and "6 'tiny/retain' prompts" in repr(point)
    mem = tt.EditMemory.build(mdlm, ADA, point)
    assert mem.config == c and mem.q_effective == len(ADA)
    assert mem.gate.calibration.fact_ids == tuple(CALIBRATION_IDS) and mem.gate.shrinkage == 0.2
    paper = tt.EditMemory.build(mdlm, ADA, point, subject_gate=False, apply_at="all",
                                key_at="subject", q=None)  # fmt: skip
    assert paper.config.is_paper_form and paper.gate is None and paper.config.alpha == 3.0
    with pytest.raises(EditMemoryError, match="1 ≤ q ≤ N=2"):
        tt.EditMemory.build(mdlm, ADA, point, q=16)  # an explicit q is checked
    assert tt.EditMemory.build(mdlm, ADA, point, gate_shrinkage=0.5).gate.shrinkage == 0.5
    again = OperatingPoint.from_dict(point.to_dict())
    assert again == point and again.to_dict() == point.to_dict()
    assert point.to_dict()["edit_steps"] is None and "steps" not in point.to_dict()


def test_shipped_token_point_needs_no_calibration(mdlm):
    """A token-gated point has no calibration; steer overrides drop the gate."""
    record = _record(mdlm, gate_kind="tokens", calibration=..., gate_margin=..., gate_shrinkage=...)
    record.update(ridge_blocks="subject", q=None)
    with shipping(mdlm, record):
        point = OperatingPoint.shipped(mdlm)
    assert point.calibration is None and point.gate_shrinkage is None
    mem = tt.EditMemory.build(mdlm, ADA, point)
    assert mem.config.gate_kind == "tokens" and mem.config.ridge_blocks == "subject"
    steer = tt.EditMemory.build(mdlm, ADA, point, mode="steer", apply_at="all", key_at="subject")
    assert steer.config.mode == "steer" and not steer.config.subject_gate


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"alhpa": 1.0}, r"unknown fields \['alhpa'\]"),
        ({"command": ...}, r"lacks the fields \['command'\]"),
        ({"fingerprint": ..., "measured": ...}, r"lacks the fields \['fingerprint', 'measured'\]"),
        ({"calibration": ...}, r"lacks the fields \['calibration'\]"),
        ({"gate_kind": ...}, r"lacks the fields \['gate_kind'\]"),
        ({"calibration": {"corpus": "tiny", "split": "retain", "ids": ["nobody"]}}, "absent"),
        ({"calibration": {"corpus": "tiny", "split": "nowhere", "ids": ["a"]}}, "unknown split"),
        ({"calibration": {"split": "retain", "ids": ["a"]}}, r"lacks \['corpus'\]"),
        ({"alpha": math.nan}, "alpha must be a finite number"),
        ({"gate_shrinkage": 0.0}, r"gate_shrinkage must lie in \(0, 1\]"),
        ({"measured": {}}, "'measured' must be a non-empty"),
        ({"edit_steps": [0]}, "step set twice"),
    ],
)
def test_shipped_point_is_validated(mdlm, changes, match):
    """A missing or unknown field, a bad value or unresolvable calibration: an EditMemoryError
    naming it and the model's file."""
    with shipping(mdlm, _record(mdlm, **changes)):
        with pytest.raises(EditMemoryError, match=match) as err:
            OperatingPoint.shipped(mdlm)
    assert "tie_tracing.json" in str(err.value)


def test_no_point_and_stale_point(mdlm):
    """A model without a point: an error saying so and how to tune one; another model's
    fingerprint: a warning naming the command to re-run."""
    with pytest.raises(EditMemoryError, match="ships no edit operating point") as err:
        OperatingPoint.shipped(mdlm)
    assert "edit_tune.py --write" in str(err.value)
    with shipping(mdlm, _record(mdlm, fingerprint="0" * 16)):
        with pytest.warns(EditMemoryWarning, match="another model.*edit_tune_gate.py --write"):
            point = OperatingPoint.shipped(mdlm)
    assert point.fingerprint == "0" * 16


def test_edit_efficacy_takes_a_config(replicas):
    """edit_efficacy(config=...) measures the same memories as the same settings as keywords."""
    model = replicas["tiny-mdlm"]
    keep = [MARA]
    kw = dict(alpha=1.0, lam=0.1, q=1)
    by_keywords = tt.editing.edit_efficacy(model, ADA, keep, {"a": 0, "b": 2}, **kw)
    config = EditConfig(layer=5, **kw)  # the layer is replaced per row
    by_config = tt.editing.edit_efficacy(model, ADA, keep, {"a": 0, "b": 2}, config=config)
    assert list(by_config) == list(by_keywords)
    assert [r["layer"] for r in by_config] == [0, 2] and by_config[0]["module"] == "resid"
