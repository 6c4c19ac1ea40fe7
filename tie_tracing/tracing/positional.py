"""Positional (ROME-style) causal tracing along the token positions of one forward (SPEC §6).

The autoregressive side of the AR-versus-diffusion comparison. For each fact, three kinds of
single forward of the same query, as nnsight interventions on ``model.logits``:

1. **clean** — no noise; every site's output at every position is captured;
2. **corrupted** — the subject embeddings get the fact's noise draws ``ε`` (the same
   :class:`~tie_tracing.tracing.patching.Corruption` and common random numbers as TIE: a fact sees the
   same ``ε`` here as in :func:`~tie_tracing.tracing.tie.trace_tie` with the same seed and ``ν``);
3. **restorations** — the corrupted forward, except that the output of site ``m`` in layer
   ``l`` at one token position is overwritten with its clean value. For ``attn``/``mlp`` and
   ``window = w > 1`` the site is restored in layers ``l − w//2 … l + w − w//2 − 1`` (clipped to
   the model; ``w = 10`` is ROME's ``l−5 … l+4``); ``resid`` is always restored in one layer,
   as in ROME (restoring the residual stream in two layers is redundant).

Every ``(draw, layer, position, module)`` restoration is one row of a batched forward (rows
chunked by ``batch_size`` to bound memory), so a fact costs ``2 + ⌈rows / batch_size⌉``
forwards instead of one per cell.

**What is measured.** The probability (and log-probability) of the **object's first token**
where the model predicts it (SPEC §6). The object is ``Fact.object`` (a substring of the
answer, located by :func:`~tie_tracing.core.facts.locate_object`); a fact without an object
(``object=None``) has the whole answer as its object, so its first token is the answer's.

* Causal (AR) models read the question followed by the answer's tokens *before* the object,
  teacher-forced (``"Where was Ada Vell born?" + " Ada Vell was born in"`` for the object
  ``"Gdansk"``); the prediction position is the last token of that query and the scored
  token the object's first (index ``len(prompt) + k`` of the aligned logits of
  :meth:`~tie_tracing.core.model.TracedModel.logits`, ``k`` the object's offset in the answer).
  For a fact without an object the query is the question alone and the answer's first
  token is scored at the last prompt position (ROME's protocol). The forward is fed the
  whole teacher-forced answer: the causal mask keeps the tokens after the prediction
  position from changing it, and the traced positions stop there.
* MDLMs read ``prompt + |answer| × [MASK]`` (the whole answer span masked, one forward) and
  score the object's first token at the object's first slot (aligned index
  ``len(prompt) + k``; a shifted MDLM such as Dream computes it one position earlier).

**Which positions are traced.** Every input position that can influence the prediction: for a
causal model the positions ``0 … prediction_position``, i.e. the prompt and the answer prefix
(the answer tokens from the object on come after the prediction and cannot change it); for an
MDLM every position of the query, prompt *and* all masked answer slots (attention is
bidirectional: a later ``[MASK]`` can carry the fact too). ``result.tokens[f]`` labels the
traced positions (masks as the tokenizer spells them), ``result.prediction_position[f]`` is
the position whose output scores the object (causal and shifted models: the position before
the object's first token; unshifted MDLMs: the object's first slot) and
``result.config["prompt_length"][fact_id]`` the number of prompt tokens, so the positions
``prompt_length … `` of a fact are answer positions (the teacher-forced answer prefix of an AR
trace, the masked slots of an MDLM trace) and the object's first token sits at
``prediction_position + shifted``.

**Which subject mentions are corrupted.** The question's: the subject positions are found
in the prompt (:func:`~tie_tracing.core.facts.locate_subject`, whole-word matching), every
mention by default (``mentions="all"``; a question that names the subject twice is corrupted
at both places, as TIE does) or the first only (``mentions="first"``, ROME's rule). The answer prefix of an AR query often names the subject
again (``" Ada Vell was born in"``); that mention stays clean and is traced like any other
answer-prefix token.

**Noise draws.** With ``n_noise > 1`` the probabilities are averaged over draws (ROME) and
``lp`` is the log of that average, so ``prob == exp(lp)`` always and the indirect effects of
:meth:`~tie_tracing.core.results.PositionalResult.effect` (``p_restored − p_corrupt`` and
``log p_restored − log p_corrupt``) compare like with like. ``lp_corrupt`` is likewise
``log mean_n p_corrupt,n``.

Limits: facts are traced one at a time (rows of a forward share one query); only the object's
first token is scored (ROME's protocol; multi-token answers are what TIE is for); an object
whose first token the tokenizer merged with the preceding text (``"(Gdansk"``) is scored as
that merged token, and the answer prefix then ends before it; a fact the clean model does
not predict (top-1 at the prediction position is not the object's first token) is traced,
warned about and listed in ``result.config["unknown_facts"]``. ``config["prompt_length"]`` is
keyed by fact id, so :meth:`~tie_tracing.core.results.PositionalResult.concat` accepts parts of
one trace and of separate traces alike (the per-fact entries are joined).
:func:`reference_positional` is the deliberately slow one-forward-per-cell reference (plain
PyTorch hooks, its own query layout) that the tests hold the batched sweep to.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import nnsight
import torch
from tqdm.auto import tqdm

from .._version import __version__
from ..core._guards import as_int, require_model
from ..core.backbones import MODULES, hidden_of
from ..core.context import ForwardContext
from ..core.errors import NonFiniteActivationError
from ..core.facts import Fact, as_facts
from ..core.results import PositionalResult
from .patching import (
    Corruption,
    Query,
    SweepSettings,
    all_sites,
    apply_noise,
    encode_query,
    fact_key,
    patched_forward,
)
from .reference import _hooks

__all__ = [
    "PositionalConfig",
    "PositionalQuery",
    "positional_query",
    "reference_positional",
    "restored_layers",
    "trace_positional",
]


@dataclass(frozen=True)
class PositionalConfig(SweepSettings):
    """Settings of a positional trace (validated on construction, recorded in the result).

    Attributes:
        modules, layers, noise_scale, nu, replace, n_noise, seed, mentions: Sites, corruption
            and the subject mentions corrupted (see
            :class:`~tie_tracing.tracing.patching.SweepSettings`). Window layers may lie outside
            ``layers``.
        window: Layers restored together for ``attn``/``mlp`` (1, or ROME's 10).
        batch_size: Restoration rows per forward.
    """

    window: int = 1
    batch_size: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "window", as_int(self.window))
        object.__setattr__(self, "batch_size", as_int(self.batch_size))
        if not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be an integer ≥ 1, got {self.window!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer ≥ 1, got {self.batch_size!r}")


def restored_layers(layer: int, module: str, window: int, num_layers: int) -> list[int]:
    """Layers whose ``module`` output a restoration "at layer ``layer``" overwrites.

    ``resid`` → ``[layer]``; ``attn``/``mlp`` → ``layer − window//2 … layer + window − window//2 − 1``
    clipped to ``0 … num_layers − 1`` (``window = 10``: ROME's ``l−5 … l+4``).

    Example:
        >>> restored_layers(1, "mlp", 10, 12), restored_layers(1, "resid", 10, 12)
        ([0, 1, 2, 3, 4, 5], [1])
    """
    if module == "resid" or window == 1:
        return [layer]
    lo = max(0, layer - window // 2)
    hi = min(num_layers, layer + window - window // 2)
    return list(range(lo, hi))


@dataclass(frozen=True)
class PositionalQuery:
    """A fact encoded for positional tracing on one model (see the module docstring).

    Attributes:
        query: The :class:`~tie_tracing.tracing.patching.Query` (prompt, answer, subject positions,
            object offsets).
        input_ids: The forward's input: ``prompt + answer`` (causal, teacher-forced; only the
            positions up to the prediction position are the traced query) or
            ``prompt + |answer| × [MASK]`` (MDLM).
        positions: The traced positions ``0 … n − 1`` (causal: prompt and answer prefix;
            MDLM: the whole input).
        object_start: Position of the object's first token, ``len(prompt) + k``: the index of
            the aligned logits that score it.
        prediction_position: Position whose output scores it (``object_start − 1`` for causal
            and shifted models, ``object_start`` for unshifted MDLMs).
        tokens: Token strings of the traced positions.

    Example:
        >>> pq = positional_query(ar, fact)     # "Where was Ada Vell born?" / object "Gdansk"  # doctest: +SKIP
        >>> pq.tokens[pq.prompt_length :]       # the teacher-forced answer prefix             # doctest: +SKIP
        (' Ada', ' Vell', ' was', ' born', ' in')
    """

    query: Query
    input_ids: tuple[int, ...]
    positions: tuple[int, ...]
    object_start: int
    prediction_position: int
    tokens: tuple[str, ...]

    @property
    def prompt_length(self) -> int:
        """Number of prompt tokens; positions from here on are answer positions."""
        return len(self.query.prompt_ids)

    @property
    def object_offset(self) -> int:
        """Offset ``k`` of the object's first token within the answer (0 without an object)."""
        return self.object_start - self.prompt_length

    @property
    def target_token(self) -> int:
        """The scored token: the object's first token."""
        return self.query.answer_ids[self.object_offset]


def positional_query(model, fact: Fact, *, mentions: str = "all") -> PositionalQuery:
    """Encode ``fact`` for positional tracing on ``model`` (see the module docstring).

    ``mentions`` chooses the subject positions (every mention in the question, or the first).

    Raises:
        SubjectNotFoundError: the subject is not in the prompt (names the fact).
        ObjectNotFoundError: the object is not among the answer's tokens (names the fact).
    """
    q = encode_query(model, fact, mentions=mentions)
    p = q.answer_start
    k = min(q.object_offsets) if fact.object is not None else 0
    start = p + k
    pred = start - 1 if model.backbone.shifted else start
    if model.is_causal:
        ids = tuple(q.prompt_ids) + tuple(q.answer_ids)
        n_pos = pred + 1  # prompt + answer prefix: everything up to the prediction position
    else:
        ids = tuple(q.prompt_ids) + (int(model.mask_token_id),) * len(q.answer_ids)
        n_pos = len(ids)
    tokens = tuple(model.tokenizer.decode([t]) for t in ids[:n_pos])
    return PositionalQuery(q, ids, tuple(range(n_pos)), start, pred, tokens)


def _sites(model, modules: Sequence[str]) -> list[tuple[int, str]]:
    """Every ``(layer, module)`` of every layer, in execution order (``attn, mlp, resid``).

    All layers, not only the traced ones: a window restores layers outside ``layers``.
    :func:`~tie_tracing.tracing.patching.all_sites` returns them sorted by ``(layer,
    EXECUTION_ORDER)``, the order nnsight must be asked in within one forward.
    """
    return all_sites(model, modules)


def _token_lp(logits: torch.Tensor, index: int, token: int) -> torch.Tensor:
    """``[rows]`` float32 ``log softmax(logits[:, index])[token]`` (aligned logits)."""
    return torch.log_softmax(logits[:, index].float(), dim=-1)[:, token].cpu()


def _capture(model, x, noise, subject, replace, sites, context) -> tuple[torch.Tensor, dict]:
    """One traced forward in ``context``: aligned logits and every site's output ``[rows, seq, d]``."""
    with torch.inference_mode(), model.at(context):
        with model.logits(x) as tracer:
            store = nnsight.save({})
            apply_noise(model, noise, subject, replace)
            for site in sites:
                store[site] = hidden_of(model.site(*site).output).detach().clone()
            logits = tracer.result.save()
    return logits, dict(store)


def _mean_prob_lp(lp_draws: torch.Tensor) -> torch.Tensor:
    """``log mean_n exp(lp_n)`` over the leading draw axis (``lp`` itself for one draw)."""
    if lp_draws.shape[0] == 1:
        return lp_draws[0]
    return torch.logsumexp(lp_draws, dim=0) - math.log(lp_draws.shape[0])


def _trace_one(
    model,
    pq: PositionalQuery,
    config: PositionalConfig,
    nu: float,
    layers: Sequence[int],
    *,
    restore_from: dict | None = None,
) -> dict:
    """Tensors of one fact's positional trace: the object's first token scored at
    ``pq.object_start`` of the aligned logits in every forward.

    ``restore_from`` replaces the clean activations as the restoration source
    (``site → [seq, d]``); the tests pass the corrupted run's own values (identity restoration).
    """
    fid = fact_key(pq.query.fact)
    device = model.param_device
    sites = _sites(model, config.modules)
    subject = torch.tensor(pq.query.subject_positions, device=device)
    x1 = torch.tensor(pq.input_ids, device=device)[None]
    p, tok = pq.object_start, pq.target_token
    corruption = config.corruption(nu)
    n_draws = config.n_noise
    noise = corruption.draws(pq.query.fact, len(subject), model.hidden_size, nu).to(device)

    # every forward reads the same query: its answer span starts after the prompt (the
    # teacher-forced prefix of a causal model, the masked slots of an MDLM)
    context = ForwardContext(step=None, answer_start=pq.prompt_length)
    clean_logits, clean = _capture(model, x1, None, subject, False, sites, context)
    source = {s: v[0] for s, v in clean.items()} if restore_from is None else restore_from
    lp_clean = _token_lp(clean_logits, p, tok)[0]
    known = int(clean_logits[0, p].argmax()) == tok
    corrupt_logits = patched_forward(
        model,
        x1.expand(n_draws, -1),
        noise=noise,
        subject=subject,
        replace=corruption.replace,
        writes={},
        context=context,
    )
    lp_corrupt = _mean_prob_lp(_token_lp(corrupt_logits, p, tok))

    cells = [
        (li, pos, mi)
        for li in range(len(layers))
        for pos in pq.positions
        for mi in range(len(config.modules))
    ]
    n_rows = n_draws * len(cells)
    lp_rows = torch.empty(n_rows)
    for start in range(0, n_rows, config.batch_size):
        stop = min(start + config.batch_size, n_rows)
        draw_of_row = torch.tensor([r // len(cells) for r in range(start, stop)], device=device)
        plan: dict[tuple[int, str], tuple[list, list]] = {}
        for r in range(start, stop):
            li, pos, mi = cells[r % len(cells)]
            m = config.modules[mi]
            for layer in restored_layers(layers[li], m, config.window, model.num_layers):
                rows, positions = plan.setdefault((layer, m), ([], []))
                rows.append(r - start)
                positions.append(pos)
        writes = {}
        for site, (rows, positions) in plan.items():
            pos_t = torch.tensor(positions, device=device)
            writes[site] = (
                (torch.tensor(rows, device=device), pos_t),
                source[site].to(device)[pos_t],
            )
        logits = patched_forward(
            model,
            x1.expand(stop - start, -1),
            noise=noise[draw_of_row],
            subject=subject,
            replace=corruption.replace,
            writes=writes,
            context=context,
        )
        if not torch.isfinite(logits[:, p]).all():
            raise NonFiniteActivationError(
                f"fact {fid!r}: non-finite logits in the positional sweep"
            )
        lp_rows[start:stop] = _token_lp(logits, p, tok)
    lp = _mean_prob_lp(
        lp_rows.reshape(n_draws, len(layers), len(pq.positions), len(config.modules))
    )
    return dict(lp=lp, lp_clean=lp_clean, lp_corrupt=lp_corrupt, known=known)


def _to_result(
    model, pq: PositionalQuery, tensors: dict, config: PositionalConfig, nu: float, layers
) -> PositionalResult:
    fact = pq.query.fact
    lp = tensors["lp"][None].contiguous()
    return PositionalResult(
        prob=lp.exp(),
        lp=lp,
        lp_clean=tensors["lp_clean"].reshape(1).float(),
        lp_corrupt=tensors["lp_corrupt"].reshape(1).float(),
        tokens=(pq.tokens,),
        subject_positions=(tuple(pq.query.subject_positions),),
        prediction_position=(pq.prediction_position,),
        window=config.window,
        fact_ids=(fact_key(fact),),
        subjects=(fact.subject,),
        questions=(fact.question,),
        answers=(fact.answer,),
        layers=tuple(layers),
        modules=config.modules,
        config=config.to_dict()
        | {"nu": nu, "causal": bool(model.is_causal), "shifted": bool(model.backbone.shifted)},
        # config["prompt_length"] is added by trace_positional after concatenation (per fact)
        seeds=(config.seed,),
        model_id=str(model.name),
        version=__version__,
    )


def trace_positional(
    model,
    facts: Sequence[Fact] | Fact,
    *,
    modules: Sequence[str] | str = MODULES,
    window: int = 1,
    layers: Sequence[int] | int | None = None,
    noise_scale: float = 3.0,
    nu: float | None = None,
    replace: bool = False,
    n_noise: int = 1,
    seed: int = 0,
    mentions: str = "all",
    batch_size: int = 256,
    progress: bool = True,
) -> PositionalResult:
    """ROME's causal trace along token positions: ``[fact, layer, position, module]``.

    Works on causal (AR) models and on MDLMs alike. Each cell scores the **object's first
    token** (the answer's first token for facts without an object) at its prediction
    position: an AR model reads the question followed by the teacher-forced answer prefix
    before the object and predicts at its last token; an MDLM reads the question followed by
    the fully masked answer and predicts at the object's first slot (one slot earlier for
    shifted MDLMs). Only the question's mentions of the subject are corrupted (all of them
    by default, the first with ``mentions="first"``), even when the answer prefix names the
    subject again. The module docstring has the details.

    Args:
        model: A :class:`~tie_tracing.core.model.TracedModel`.
        facts: Facts whose subject occurs in the question (``Fact.object``, when given,
            chooses the scored token and, for AR models, the answer prefix).
        modules: Sites to restore (subset of ``resid``, ``attn``, ``mlp``; one name such as
            ``"resid"`` means that site alone).
        window: Layers restored together for ``attn``/``mlp`` (ROME: 10); ``resid`` uses 1.
        layers: Layers of the map (default all).
        noise_scale: ``ν = noise_scale · σ_emb``, ``σ_emb`` pooled over the subject tokens of
            ``facts`` (ROME's 3σ rule); ``nu`` fixes ``ν`` instead (give the same ``nu`` to
            compare with a TIE trace of other facts).
        replace: Replace the subject embeddings by the noise instead of adding it.
        n_noise: Noise draws per fact (probabilities averaged over draws).
        seed: Seed of the draws (common random numbers, shared with TIE).
        mentions: ``"all"`` (default): every mention of the subject in the question is
            corrupted; ``"first"``: only the first (ROME's rule).
        batch_size: Restoration rows per forward (bounds memory; the same default as
            :func:`~tie_tracing.tracing.tie.trace_tie`'s rows per forward).
        progress: Show a progress bar over facts.

    Returns:
        A :class:`~tie_tracing.core.results.PositionalResult`: ``prob``/``lp`` ``[fact, layer,
        position, module]`` (positions NaN-padded to the longest fact), ``lp_clean``,
        ``lp_corrupt``, token labels of the traced positions, subject positions (in the
        question), prediction positions, config. ``config["prompt_length"]`` maps each fact
        id to its number of prompt tokens: traced positions from there on are the answer
        prefix (AR) or the masked answer slots (MDLM); the object's first token sits at
        ``prediction_position + config["shifted"]``. ``result.effect()`` is the indirect effect ``p_restored − p_corrupt``
        (``result.with_metric("lp").effect()`` the log-probability version).

    Raises:
        SubjectNotFoundError: a fact's subject is not in its prompt (names the fact).
        ObjectNotFoundError: a fact's object is not among its answer's tokens (names the fact).
        NonFiniteActivationError: NaN/inf appeared (names the fact).
        ValueError: bad ``modules``, ``window``, ``layers`` or noise settings.

    Example:
        >>> ar = tt.load_model("tiny-ar")                                    # doctest: +SKIP
        >>> facts = tt.load_facts("tiny", "forget01")[:4]                    # doctest: +SKIP
        >>> facts[0].answer, facts[0].object                                 # doctest: +SKIP
        ('Datrastond Loho was born in Zurich, a city in Switzerland.', 'Zurich')
        >>> r = tt.trace_positional(ar, facts, modules=("mlp",), window=3)   # doctest: +SKIP
        >>> r.effect().shape          # [fact, layer, position, module]      # doctest: +SKIP
        torch.Size([4, 6, 18, 1])
        >>> r.tokens[0][r.config["prompt_length"][r.fact_ids[0]] :]         # doctest: +SKIP
        (' Datrastond', ' Loho', ' was', ' born', ' in')
    """
    require_model(model, "trace_positional")
    facts = as_facts(facts, "trace_positional")
    ids = [fact_key(f) for f in facts]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate fact ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    config = PositionalConfig(
        modules=(modules,) if isinstance(modules, str) else tuple(modules),
        window=window,
        layers=None
        if layers is None
        else ((layers,) if isinstance(layers, int) else tuple(layers)),
        noise_scale=noise_scale,
        nu=nu,
        replace=replace,
        n_noise=n_noise,
        seed=seed,
        mentions=mentions,
        batch_size=batch_size,
    )
    layer_list = list(range(model.num_layers)) if config.layers is None else list(config.layers)
    for layer in layer_list:
        for m in config.modules:
            model.check_site(layer, m)
    pqs = [positional_query(model, f, mentions=config.mentions) for f in facts]
    nu_value = config.corruption().resolve_nu(model, [pq.query for pq in pqs])
    results, unknown, prompt_length = [], [], {}
    for pq in tqdm(pqs, desc="trace_positional", unit="fact", disable=not progress):
        tensors = _trace_one(model, pq, config, nu_value, layer_list)
        if not tensors["known"]:
            unknown.append(fact_key(pq.query.fact))
        prompt_length[fact_key(pq.query.fact)] = pq.prompt_length
        results.append(_to_result(model, pq, tensors, config, nu_value, layer_list))
    if unknown:
        warnings.warn(
            f"{model.name}: the clean model's top-1 prediction is not the answer's object (its "
            f"first token, at the prediction position) for "
            f"{len(unknown)} of {len(facts)} facts ({unknown[:5]}{' …' if len(unknown) > 5 else ''}); "
            f"their traces measure little. result.config['unknown_facts'] lists them.",
            stacklevel=2,
        )
    result = PositionalResult.concat(results)
    extra = {"unknown_facts": unknown, "prompt_length": prompt_length}
    return dataclasses.replace(result, config=result.config | extra)


# ----------------------------------------------------------------------------- slow reference


def reference_positional(
    model,
    fact: Fact,
    *,
    modules: Sequence[str] = MODULES,
    window: int = 1,
    nu: float,
    n_noise: int = 1,
    seed: int = 0,
    replace: bool = False,
    mentions: str = "all",
) -> dict:
    """A deliberately slow positional trace: plain PyTorch hooks, one batch-1 forward per cell.

    Builds its own query from the fact's encoding (:func:`~tie_tracing.tracing.patching.encode_query`:
    prompt and answer ids, subject positions in the question, object offsets) and shares with
    :func:`trace_positional` only that encoding, the model's forward and the noise draws. It
    follows SPEC §6 literally: a causal model is fed the question and the answer's tokens up to
    and including the object's first token (nothing after it, unlike the sweep, which feeds
    the whole teacher-forced answer), an MDLM the question and ``|answer|`` masks; the object's
    first token is scored where the aligned logits put it; the traced positions are those
    before the object's first token (causal) or every position (MDLM).

    Returns:
        ``{"lp": [layer, position, module], "lp_clean": float, "lp_corrupt": float,
        "positions": int, "prediction_position": int, "token": int}`` (probabilities averaged
        over draws, then logged; ``positions`` traced, the scored ``token``).
    """
    q = encode_query(model, fact, mentions=mentions)
    prompt, answer = list(q.prompt_ids), list(q.answer_ids)
    k = 0 if fact.object is None else sorted(q.object_offsets)[0]
    token = answer[k]
    if model.is_causal:
        ids = prompt + answer[: k + 1]  # the teacher-forced prefix, then the scored token
        n_pos = len(prompt) + k  # everything before the scored token
    else:
        ids = prompt + [int(model.mask_token_id)] * len(answer)
        n_pos = len(ids)
    read_at = len(prompt) + k  # aligned logits: index i scores token i
    modules = [m for m in MODULES if m in modules]
    n_layers = model.num_layers
    subject = list(q.subject_positions)
    x = torch.tensor(ids)[None]

    def read(logits):
        return float(torch.log_softmax(logits[0, read_at].float(), dim=-1)[token])

    clean: dict[tuple[int, str], torch.Tensor] = {}
    pairs = []
    for layer in range(n_layers):
        for m in modules:

            def rec(_mod, _inp, out, key=(layer, m)):
                clean[key] = hidden_of(out)[0].detach().clone()

            pairs.append((model.site_module(layer, m), rec))
    with torch.inference_mode(), _hooks(pairs):
        lp_clean = read(model.forward_logits(x))

    draws = Corruption(nu=nu, n_noise=n_noise, seed=seed, replace=replace).draws(
        fact, len(subject), model.hidden_size, nu
    )
    lp = torch.empty(n_noise, n_layers, n_pos, len(modules), dtype=torch.float64)
    lp_corrupt = torch.empty(n_noise, dtype=torch.float64)
    for n in range(n_noise):

        def add_noise(_mod, _inp, out, eps=draws[n]):
            h = hidden_of(out)
            for j, s in enumerate(subject):
                if replace:
                    h[0, s] = eps[j].to(h.dtype)
                else:
                    h[0, s] += eps[j].to(h.dtype)

        noise_hook = [(model.embedding_module(), add_noise)]
        with torch.inference_mode(), _hooks(noise_hook):
            lp_corrupt[n] = read(model.forward_logits(x))
        for layer in range(n_layers):
            for pos in range(n_pos):
                for mi, m in enumerate(modules):
                    if m == "resid" or window == 1:
                        span = [layer]
                    else:
                        span = [
                            j
                            for j in range(layer - window // 2, layer + window - window // 2)
                            if 0 <= j < n_layers
                        ]
                    pairs = list(noise_hook)
                    for j in span:

                        def write(_mod, _inp, out, key=(j, m), pos=pos):
                            hidden_of(out)[0, pos] = clean[key][pos]

                        pairs.append((model.site_module(j, m), write))
                    with torch.inference_mode(), _hooks(pairs):
                        lp[n, layer, pos, mi] = read(model.forward_logits(x))
    mean_lp = torch.logsumexp(lp, dim=0) - math.log(n_noise)
    corrupt = float(torch.logsumexp(lp_corrupt, dim=0) - math.log(n_noise))
    return {
        "lp": mean_lp,
        "lp_clean": lp_clean,
        "lp_corrupt": corrupt,
        "positions": n_pos,
        "prediction_position": read_at - int(model.backbone.shifted),
        "token": token,
    }
