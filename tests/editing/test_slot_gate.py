"""The answer-slot gate (gate_kind="slots") and the never-met update (targets="unknown").

References are plain torch forward hooks and numpy linear algebra, sharing no code with
:mod:`tie_tracing.editing.slot_gate`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tie_tracing as tt
from tie_tracing.core.backbones import hidden_of
from tie_tracing.core.context import ForwardContext
from tie_tracing.editing import EditMemoryError
from tie_tracing.editing.slot_gate import lookalikes, slot_decisions

LAYER = 1
FORGET = [
    tt.Fact(subject="ada vell", question="where was ada vell born", answer="ada vell was born in lisbon",
            object="lisbon", id="ada-born"),
    tt.Fact(subject="ada vell", question="what book was ada vell the writer of",
            answer="ada vell wrote orion lyra", object="orion lyra", id="ada-book"),
]  # fmt: skip
CALIBRATION = [
    tt.Fact(subject="mara tov", question="where was mara tov born", answer="mara tov was born in porto",
            object="porto", id="mara-born"),
    tt.Fact(subject="kess orion", question="when was kess orion born", answer="kess orion was born in 1962",
            object="1962", id="kess-born"),
    tt.Fact(subject="mara tov", question="what book was mara tov the writer of",
            answer="mara tov wrote lyra", object="lyra", id="mara-book"),
]  # fmt: skip
NAMES = ["lyra kess", "porto mara"]


def _config(**kw) -> tt.EditConfig:
    base = dict(
        layer=LAYER, mode="steer", alpha=2.0, subject_gate=True, gate_kind="slots",
        gate_margin=0.0, apply_at="answer",
    )  # fmt: skip
    return tt.EditConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def slots(mdlm):
    return tt.EditMemory.build(
        mdlm, FORGET, _config(), targets="unknown", unknown_names=NAMES, calibration=CALIBRATION
    )


def _states(model, ids: list[int]) -> torch.Tensor:
    """``[S, d]`` the block output of one sequence, read with a plain torch hook."""
    seen = {}
    block = model.site_module(LAYER, "resid")
    handle = block.register_forward_hook(lambda _m, _i, o: seen.__setitem__("h", hidden_of(o)))
    try:
        with torch.inference_mode():
            model._module(torch.tensor([ids]))
    finally:
        handle.remove()
    return seen["h"][0].float()


def _query(model, fact: tt.Fact, question: str | None = None) -> tuple[list[int], int]:
    prompt, answer = model.encode(question or fact.question, fact.answer)
    return list(prompt) + [model.mask_token_id] * len(answer), len(prompt)


def _whitener(rows: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    mu = rows.mean(0)
    c = np.cov((rows - mu).T, bias=True)
    c = (1 - s) * c + s * np.trace(c) / c.shape[0] * np.eye(c.shape[0])
    w, v = np.linalg.eigh(c)
    return mu, v @ np.diag(w**-0.5) @ v.T


def _unit(x, mu, wh):
    z = (x - mu) @ wh
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def test_keys_and_radii_match_a_reference(mdlm, slots):
    """Keys are the unit whitened object slots of each fact's query; a key's radius is the
    highest cosine of a calibration slot or a look-alike slot of its subject (numpy reference)."""
    mask = mdlm.mask_token_id
    neg = []
    for f in CALIBRATION:
        ids, p = _query(mdlm, f)
        neg.append(_states(mdlm, ids)[p:].numpy().astype(np.float64))
    neg_rows = np.concatenate(neg)
    mu, wh = _whitener(neg_rows, 0.1)
    keys, alike = [], []
    for f in FORGET:
        ids, p = _query(mdlm, f)
        answer = mdlm.encode(f.question, f.answer)[1]
        offs = tt.core.facts.locate_object(mdlm.tokenizer, answer, f)
        keys.append(_states(mdlm, ids)[[p + o for o in offs]].numpy().astype(np.float64))
        for name in NAMES:
            first, last = name.split()
            for other in (f"{first} vell", f"ada {last}"):
                q, pq = _query(mdlm, f, f.question.replace(f.subject, other))
                alike.append(_states(mdlm, q)[pq:].numpy().astype(np.float64))
    k = _unit(np.concatenate(keys), mu, wh)
    negatives = np.concatenate([_unit(neg_rows, mu, wh), _unit(np.concatenate(alike), mu, wh)])
    radius = (k @ negatives.T).max(1)
    gate = slots.slot_gate
    assert gate.key_ids == ("ada-born",) + ("ada-book",) * (len(k) - 1)
    np.testing.assert_allclose(gate.keys.numpy(), k, atol=2e-4)
    np.testing.assert_allclose(gate.radius.numpy(), radius, atol=2e-4)
    assert mask not in [t for f in CALIBRATION for t in mdlm.encode(f.question, f.answer)[0]]


def test_lookalikes_share_one_word_with_the_subject(mdlm):
    rows = lookalikes(mdlm, FORGET[0], NAMES)
    texts = [mdlm.tokenizer.decode([t for t in r if t != mdlm.mask_token_id]) for r in rows]
    assert len(rows) == 4
    assert any("lyra vell" in t for t in texts) and any("ada kess" in t for t in texts)
    one_word = tt.Fact(subject="kess", question="when was kess born", answer="1962", id="k")
    assert lookalikes(mdlm, one_word, NAMES) == []


def _decide(model, memory, ids: list[int]) -> torch.Tensor:
    s = memory._tensors(torch.device("cpu"))
    x = torch.tensor([ids])
    return memory.slot_gate.open_facts(
        _states(model, ids)[None], x == model.mask_token_id, s["slot_key_row"],
        s["slot_threshold"], len(memory),
    )  # fmt: skip


def test_own_query_opens_and_calibration_never_does_at_margin_zero(mdlm, slots):
    """At margin 0 no calibration slot can exceed its own maximum (closed), and a fact's own
    object slot has cosine 1 with its key (open, unless a calibration slot is identical)."""
    assert (slots.slot_gate.radius < 1 - 1e-4).all()
    for i, f in enumerate(FORGET):
        assert _decide(mdlm, slots, _query(mdlm, f)[0])[0, i] == 1
    for f in CALIBRATION:
        assert _decide(mdlm, slots, _query(mdlm, f)[0]).sum() == 0


def test_unknown_targets_are_the_never_met_answer_slots(mdlm, slots):
    """v_f is the query's answer-slot mean; v*_f the mean over names of the same question asked
    about each name (same answer length)."""
    for i, f in enumerate(FORGET):
        ids, p = _query(mdlm, f)
        assert torch.allclose(slots.answer_values[i], _states(mdlm, ids)[p:].mean(0), atol=1e-5)
        never = []
        for name in NAMES:
            q, pq = _query(mdlm, f, f.question.replace(f.subject, name))
            never.append(_states(mdlm, q)[pq:].mean(0))
        assert torch.allclose(slots.target_values[i], torch.stack(never).mean(0), atol=1e-5)
    assert set(slots.targets) == {tt.editing.memory.UNKNOWN_TARGET}


def test_gated_steer_adds_the_mean_delta_of_the_opened_facts(slots):
    s = slots._tensors(torch.device("cpu"))
    h = torch.randn(3, slots.deltas.shape[1])
    gate = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    got = slots._token_update(h, s, gate)
    d = slots.deltas
    want = 2.0 * torch.stack([d[0], (d[0] + d[1]) / 2, d[1]])
    assert torch.allclose(got, want, atol=1e-6)


def test_hold_rule():
    """A row whose answer is all [MASK] decides and stores; a later row of the same prompt takes
    the stored decision; an unseen prompt with part of its answer written decides alone."""
    m = 3
    held: dict = {}
    counts: dict = {}
    fresh = torch.tensor([[5, 6, m, m, m], [7, 8, m, m, m]])
    decide = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    out = slot_decisions(fresh, m, 2, decide, held, counts)
    assert torch.equal(out, decide) and counts == {"decided": 2}
    later = torch.tensor([[5, 6, 9, m, m], [4, 4, 9, m, m]])
    out = slot_decisions(later, m, 2, torch.tensor([[0.0, 1.0], [0.0, 1.0]]), held, counts)
    assert out.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert counts == {"decided": 2, "held": 1, "unheld": 1}
    # no answer_start: the answer is the masked suffix
    out = slot_decisions(fresh, m, None, decide, None, None)
    assert torch.equal(out, decide)


def test_in_the_loop_the_first_forward_decides_and_later_steps_hold(mdlm, slots):
    steps = 4
    with slots.install(mdlm) as handle:
        tt.diffuse(mdlm, FORGET + CALIBRATION, steps=steps, progress=False)
        rows = len(FORGET) + len(CALIBRATION)
        assert handle.gate_rows["decided"] == rows
        assert handle.gate_rows["held"] == rows * (steps - 1)
        assert handle.gate_rows["unheld"] == 0
    assert not handle.held  # removal forgets the decisions


def test_install_remove_is_bit_exact_and_calibration_rows_keep_their_bits(mdlm, slots):
    ids, _ = _query(mdlm, CALIBRATION[0])
    x = torch.tensor([ids])
    with torch.inference_mode():
        before = mdlm.logits(x).clone()
        with slots.install(mdlm):
            during = mdlm.logits(x).clone()
            edited = mdlm.logits(torch.tensor([_query(mdlm, FORGET[0])[0]])).clone()
        after = mdlm.logits(x)
        plain = mdlm.logits(torch.tensor([_query(mdlm, FORGET[0])[0]]))
    assert torch.equal(before, during) and torch.equal(before, after)
    assert not torch.equal(edited, plain)


def test_save_load_without_insert(mdlm, slots, tmp_path):
    path = slots.save(tmp_path / "slots.safetensors")
    back = tt.EditMemory.load(path)
    assert back.equals(slots) and back.slot_gate.equals(slots.slot_gate)
    smaller = slots.without("ada-book")
    assert set(smaller.slot_gate.key_ids) == {"ada-born"}
    assert torch.equal(smaller.slot_gate.radius, slots.slot_gate.radius[:1])
    plain = tt.EditMemory.build(mdlm, FORGET[:1], _config(), calibration=CALIBRATION)
    grown = plain.insert(FORGET[1:], model=mdlm)
    assert grown.slot_gate.key_ids == slots.slot_gate.key_ids
    assert torch.equal(grown.slot_gate.radius[:1], plain.slot_gate.radius)  # old keys unmoved


def test_errors(mdlm, slots):
    with pytest.raises(EditMemoryError, match="unknown_names"):
        tt.EditMemory.build(mdlm, FORGET, _config(), targets="unknown", calibration=CALIBRATION)
    with pytest.raises(EditMemoryError, match="subjects of the facts"):
        tt.EditMemory.build(
            mdlm, FORGET, _config(), targets="unknown", unknown_names=["Ada  Vell"],
            calibration=CALIBRATION,
        )  # fmt: skip
    with pytest.raises(EditMemoryError, match="apply_at='answer'"):
        _config(apply_at="all")
    with pytest.raises(EditMemoryError, match="calibration"):
        tt.EditMemory.build(mdlm, FORGET, _config())
    with pytest.raises(EditMemoryError, match="unknown_names= is read"):
        tt.EditMemory.build(mdlm, FORGET, tt.EditConfig(layer=LAYER), unknown_names=NAMES)
    with pytest.raises(EditMemoryError, match="rebuild"):
        slots.insert(CALIBRATION[:1], model=mdlm)
    with pytest.raises(EditMemoryError, match="no key"):
        slots.slot_gate.key_index(["ada-born", "ada-book", "other"])


def test_update_without_a_handle_decides_per_call(mdlm, slots):
    """memory.update (no installed edit) decides each row on its own slots."""
    ids, p = _query(mdlm, FORGET[0])
    h = _states(mdlm, ids)[None]
    upd = slots.update(h, torch.tensor([ids]))
    assert upd[0, :p].abs().sum() == 0 and upd[0, p:].abs().sum() > 0
    ids_c, _ = _query(mdlm, CALIBRATION[0])
    assert slots.update(_states(mdlm, ids_c)[None], torch.tensor([ids_c])).abs().sum() == 0
    assert ForwardContext(step=0, answer_start=p).answer_start == p


def test_a_step_set_edit_holds_the_decision_of_the_first_forward(mdlm, slots):
    """edit_steps={2}: step 0 does not edit but decides; step 2 edits with that decision."""
    late = slots.with_config(edit_steps={2})
    with late.install(mdlm) as handle:
        tt.diffuse(mdlm, FORGET, steps=4, progress=False)
        assert handle.gate_rows["decided"] == len(FORGET)
        assert handle.gate_rows["unheld"] == 0
        assert set(handle.fired) == {2} and handle.fired[2] == handle.skipped[0] > 0


def test_on_the_embedded_model_the_gate_follows_the_person_not_the_name():
    """tiny-mdlm, one validation person forgotten at the tuned point (layer 7, margin −0.09):
    at the first forward the gate opens on the person's never-trained probes (other surface
    forms, held-out wordings, indirect references) and stays shut on mention prompts — other
    people's questions that name the person — and on retain questions. An exact-name filter
    does the opposite on the first two families (checked on the same prompts)."""
    from tie_tracing.zoo import corpus

    model = tt.load_model("tiny-mdlm")
    person = tt.load_facts("tiny", "validation")[:12]
    subject = person[0].subject
    assert {f.subject for f in person} == {subject}
    ids = {f.id for f in person}
    evaluated = {
        f.id for s in ("retain_eval", "neighbour", "world") for f in tt.load_facts("tiny", s)
    }

    def as_fact(r):
        return tt.Fact(
            subject=r["subject"], question=r["question"], answer=r["answer"], object=r["object"],
            id=r["id"],
        )  # fmt: skip

    rows = corpus.training_pairs("tiny", "train")
    forget = person + [
        as_fact(r) for r in rows if r["base"] in ids and r["kind"] in ("T1-full", "T2-full")
    ]
    calibration = [
        as_fact(r)
        for r in corpus.training_pairs("tiny", "train_retain")
        if r["kind"] in ("T1-full", "T2-full")
        or (r["kind"] == "T0-full" and r["base"] not in evaluated)
    ]
    config = tt.EditConfig(
        layer=7, mode="steer", alpha=4.0, subject_gate=True, gate_kind="slots",
        gate_margin=-0.09, apply_at="answer",
    )  # fmt: skip
    memory = tt.EditMemory.build(
        model, forget, config, targets="unknown", unknown_names=corpus.holdout_names()[:8],
        calibration=calibration,
    )  # fmt: skip

    def open_share(facts):
        return float(memory.slot_gate_opens(model, facts).any(-1).double().mean())

    pid = person[0].id.split("-")[0]
    probes = {
        family: [
            f for f in corpus.load_probes("tiny", "validation", family) if f.id.startswith(pid)
        ]
        for family in ("surface", "template", "indirect")
    }
    mention = [f for f in corpus.load_probes("tiny", "validation", "mention") if f.id.endswith(pid)]
    assert open_share(probes["surface"]) >= 0.9
    assert open_share(probes["template"]) >= 0.8
    assert open_share(probes["indirect"]) >= 0.5
    assert open_share(mention) <= 0.05
    assert open_share(tt.load_facts("tiny", "retain_eval")) <= 0.02
    # the same prompts defeat an exact-name filter: every mention names the person, and
    # none of the non-canonical surface forms does
    assert all(subject in f.question for f in mention)
    assert not any(subject in f.question for f in probes["surface"])


def test_slot_gate_opens_is_the_first_forward_decision(mdlm, slots):
    """``slot_gate_opens`` equals the decision on states read with a plain hook, per query."""
    facts = FORGET + CALIBRATION
    want = torch.stack([_decide(mdlm, slots, _query(mdlm, f)[0])[0] for f in facts])
    assert torch.equal(slots.slot_gate_opens(mdlm, facts), want)
    assert want[: len(FORGET)].any(-1).all() and not want[len(FORGET) :].any()
    plain = tt.EditMemory.build(mdlm, FORGET, tt.EditConfig(layer=LAYER))
    with pytest.raises(EditMemoryError, match="no answer-slot gate"):
        plain.slot_gate_opens(mdlm, FORGET)
