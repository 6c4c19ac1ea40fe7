"""Edit efficacy at several installation layers (SPEC §10.3): the AR-versus-diffusion question
asked of the edit memory — does it act more where TIE points than at the AR-positional layer?

:func:`~tie_tracing.analysis.compare.pick_layers` chooses the layers from the two traces.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..analysis.compare import Rows
from ..analysis.stats import mean_ci
from ..core._guards import require_model
from ..core.likelihood import answer_logprob
from .config import EditConfig
from .memory import EditMemory
from .operating_point import OperatingPoint

__all__ = ["edit_efficacy"]


def edit_efficacy(
    model,
    facts,
    retain,
    layers: Mapping[str, int],
    *,
    config: EditConfig | OperatingPoint | None = None,
    module: str | None = None,
    estimator: str = "masked",
    n_resamples: int = 2000,
    seed: int = 0,
    **memory_kwargs,
) -> Rows:
    """Edit efficacy of the same memory installed at several layers (SPEC §10.3).

    For each named layer, an :class:`~tie_tracing.editing.EditMemory` of ``facts`` is built
    as ``EditMemory.build(model, facts, config, layer=layer, module=module,
    **memory_kwargs)`` — the config's other settings, or the paper's memory without one, with
    ``memory_kwargs`` such as ``alpha=``, ``lam=``, ``q=`` applied —, installed, and the
    per-fact answer log-probabilities of ``facts`` (forget) and ``retain`` are compared with
    the unedited model's: ``ΔForgetLP`` (more negative = more forgotten) and ``ΔRetainLP``
    (closer to 0 = better kept), means over facts with percentile-bootstrap 95% CIs.

    Args:
        model: The MDLM to edit (its weights are never changed; the memory is removed after).
        facts: The forget facts (each needs a ``target`` or the memory's default refusal).
        retain: Facts to keep.
        layers: ``{name: layer}``, e.g. :func:`pick_layers`'s output; replaces the config's
            layer.
        config: An :class:`~tie_tracing.editing.EditConfig` or
            :class:`~tie_tracing.editing.OperatingPoint` (default: the paper's memory).
        module: The site of the memory (default: the config's, else ``resid``, the paper's).
        estimator: ``"masked"`` or ``"elbo"`` (see :func:`~tie_tracing.core.likelihood.answer_logprob`).
        **memory_kwargs: Further settings of :meth:`EditMemory.build`.

    Returns:
        One row per layer name: ``installation, layer, module, d_forget_lp, d_forget_lp_low,
        d_forget_lp_high, d_retain_lp, d_retain_lp_low, d_retain_lp_high, forget_lp_base,
        retain_lp_base, estimator, n_forget, n_retain``.
    """
    require_model(model, "edit_efficacy")
    facts, retain = list(facts), list(retain)
    base_f = answer_logprob(model, facts, estimator=estimator, seed=seed, progress=False)
    base_r = answer_logprob(model, retain, estimator=estimator, seed=seed, progress=False)
    rows = []
    for name, layer in layers.items():
        memory = EditMemory.build(
            model, facts, config, layer=int(layer), module=module, **memory_kwargs
        )
        with memory.install(model):
            lp_f = answer_logprob(model, facts, estimator=estimator, seed=seed, progress=False)
            lp_r = answer_logprob(model, retain, estimator=estimator, seed=seed, progress=False)
        df = mean_ci((lp_f - base_f).tolist(), n_resamples=n_resamples, seed=seed)
        dr = mean_ci((lp_r - base_r).tolist(), n_resamples=n_resamples, seed=seed)
        rows.append(
            {
                "installation": name,
                "layer": int(layer),
                "module": memory.config.module,
                "d_forget_lp": df[0],
                "d_forget_lp_low": df[1],
                "d_forget_lp_high": df[2],
                "d_retain_lp": dr[0],
                "d_retain_lp_low": dr[1],
                "d_retain_lp_high": dr[2],
                "forget_lp_base": float(base_f.mean()),
                "retain_lp_base": float(base_r.mean()),
                "estimator": estimator,
                "n_forget": len(facts),
                "n_retain": len(retain),
            }
        )
    return Rows(tuple(rows), kind="edit_efficacy")
