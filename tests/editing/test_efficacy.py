"""Edit efficacy by installation layer (SPEC §10.3): the memory at each layer, ΔLP with CIs."""

from __future__ import annotations

import math

import tie_tracing as tt


def test_edit_efficacy_rows(replicas):
    """edit_efficacy gives one row per installation layer with ΔForgetLP / ΔRetainLP and CIs."""
    fact = tt.Fact(
        subject="ada vell",
        question="where was ada vell born",
        answer="lisbon",
        target="paris",
        id="f0",
    )
    keep = [
        tt.Fact(
            subject="mara", question="what book was mara the writer of", answer="orion", id="r0"
        ),
        tt.Fact(subject="kess", question="where was kess born", answer="porto", id="r1"),
    ]
    rows = tt.editing.edit_efficacy(
        replicas["tiny-mdlm"], [fact], keep, {"a": 0, "b": 2}, alpha=1.0, lam=0.1, q=1
    )
    assert [r["installation"] for r in rows] == ["a", "b"] and rows[1]["layer"] == 2
    assert all(math.isfinite(r["d_forget_lp"]) and math.isfinite(r["d_retain_lp"]) for r in rows)
