"""Tracing settings as values: frozen, keyword-only configs validated on construction.

A trace is described by one config, nested by concern::

    TraceConfig(
        steps=8,                                   # T, the denoising steps
        sampler=LLaDASampler(),                    # the commit rule (core.samplers)
        corruption=Corruption(noise_scale=3.0, n_noise=1, seed=0, mentions="all"),
        sites=Sites(layers=None, modules=("resid", "attn", "mlp")),
        target="object", lp="frozen", decay=0.5,   # what LP sums and how Eq. 4 weighs it
        mode="exact", horizon=None,                # how much of each future is followed
        patch_steps=None,                          # the steps patched (None: all T)
        budget=Budget(max_memory=None, batch_size=None),  # speed and memory, never results
    )

    PositionalConfig(corruption=Corruption(...), sites=Sites(...), window=1, budget=Budget())

Every entry point takes ``(model, facts, config=None, **overrides)``: the overrides are applied
to the config (:meth:`TraceConfig.override`) by their field names or by the flat names users
already write — ``trace_tie(model, facts, steps=8, n_noise=4)`` sets ``corruption.n_noise`` —
and an unknown name is an error that lists the valid ones (:data:`OVERRIDES`). The sampler's
``temperature`` and ``block_length`` are shorthands: beside ``sampler=`` they must agree with
it, otherwise they set the config's sampler.

A config knows nothing about a model. A trace resolves it **once** against the model and the
facts into a plan (:class:`~tie_tracing.tracing.tie.TracePlan`,
:class:`~tie_tracing.tracing.positional.PositionalPlan`): the sampler checked against the
model's family and bound to its special tokens, the layers and sites checked against the
backbone, the facts encoded, the target positions located, ``ν`` resolved. The inner layers
take the plan and check nothing again.

``to_dict()`` is the flat record results carry in ``config`` (the keys results have always
had: ``modules``, ``layers``, the corruption's settings, ``steps``, ``decay``, ``temperature``,
``block_length``, ``lp``, ``target``, ``mode``, ``horizon``, ``sampler``); the budget is left
out, since it never changes a result.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from ..core._guards import as_int, as_ints, as_real
from ..core.backbones import MODULES, module_names
from ..core.facts import Fact, as_facts
from ..core.sampler import check_lp_mode, check_target
from ..core.samplers import Sampler, make_sampler
from .budget import default_budget, parse_memory, rows_per_forward
from .patching import Corruption, all_sites, fact_key

#: Sweep modes of :func:`~tie_tracing.tracing.tie.trace_tie`.
MODES: tuple[str, ...] = ("exact", "immediate", "attribution")


@dataclass(frozen=True, kw_only=True)
class Sites:
    """Where patches (restorations) go: ``layers × modules``.

    Attributes:
        layers: Layers (default ``None``: all of the model's); an int is one layer.
        modules: Sites, a subset of ``("resid", "attn", "mlp")`` (kept in that order); one
            name such as ``"resid"`` is that site alone.
    """

    layers: tuple[int, ...] | None = None
    modules: tuple[str, ...] = MODULES

    def __post_init__(self) -> None:
        object.__setattr__(self, "modules", module_names(self.modules))
        layers = as_ints(self.layers)  # NumPy integers are layers too
        if layers is None:
            return
        layers = (layers,) if isinstance(layers, int) else layers
        if not isinstance(layers, tuple) or not all(
            isinstance(layer, int) and not isinstance(layer, bool) for layer in layers
        ):
            raise ValueError(f"layers must be integers, got {self.layers!r}")
        if not layers:
            raise ValueError(
                "layers is empty, so nothing would be traced: give at least one layer, or "
                "layers=None for all of them"
            )
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers lists a layer twice: {layers!r}")
        object.__setattr__(self, "layers", layers)

    def resolve(self, model) -> tuple[tuple[int, ...], tuple[tuple[int, str], ...]]:
        """``(layers, sites)`` on ``model``: the layer list and the ``(layer, module)`` sites in
        execution order, checked against its backbone (a layer it lacks is named)."""
        layers = tuple(range(model.num_layers)) if self.layers is None else self.layers
        return layers, tuple(all_sites(model, self.modules, layers))

    def to_dict(self) -> dict:
        return {"modules": list(self.modules), "layers": _list(self.layers)}


@dataclass(frozen=True, kw_only=True)
class Budget:
    """How many rows one forward carries: speed and memory, never results.

    Attributes:
        max_memory: Memory budget of one forward, bytes or a size such as ``"2GB"``
            (:mod:`~tie_tracing.tracing.budget`); default: 90% of the free CUDA memory on a
            GPU, half the available RAM on CPU.
        batch_size: Rows per forward, overriding ``max_memory``.
    """

    max_memory: int | float | str | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_size", as_int(self.batch_size))
        b = self.batch_size
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise ValueError(f"batch_size must be an integer ≥ 1 or None, got {b!r}")
        if self.max_memory is not None:
            parse_memory(self.max_memory)  # a clear error for a bad size, before any work

    def bytes(self, device) -> int:
        """The budget in bytes on ``device`` (``max_memory``, or the device's default)."""
        if self.max_memory is None:
            return default_budget(device)
        return parse_memory(self.max_memory)


def _list(values: tuple | None) -> list | None:
    return None if values is None else list(values)


@dataclass(frozen=True, kw_only=True)
class TraceConfig:
    """What a TIE trace computes (SPEC §5), validated on construction.

    Attributes:
        steps: ``T`` denoising steps.
        sampler: A :mod:`~tie_tracing.core.samplers` config, registry name or dict
            (default ``LLaDASampler()``); stored as the config.
        corruption: The noise on the subject embeddings and which mentions get it
            (:class:`~tie_tracing.tracing.patching.Corruption`).
        sites: The patched ``layers × modules`` (:class:`Sites`).
        target: The positions ``LP`` sums over: ``"object"`` (default: the object's tokens,
            the paper's Eq. 4; facts must record ``Fact.object``), ``"answer"`` (the whole
            answer span) or ``"name"`` (the subject's name inside the answer: the
            subject-identity part of the answer, Figure 2's contrast).
        lp: ``"frozen"`` (default) or ``"raw"``: how ``LP`` reads committed positions (SPEC §4).
        decay: ``γ`` of Eq. 4, in ``(0, 1]``.
        mode: ``"exact"`` (Eq. 4 over every later step), ``"immediate"`` (``IE`` at the patched
            step only, exact) or ``"attribution"`` (its first-order estimate).
        horizon: Follow each divergent future at most this many steps after its patch
            (``None``: to the end); ``mode="exact"`` only.
        patch_steps: The steps at which cells are patched (``None``: all ``T``); the cells of
            other steps are not run and stay NaN. The trajectories still run all ``T`` steps.
            ``"log:N"``: ``N`` log-spaced steps (:func:`step_grid`), a grid for long
            trajectories.
        ig_steps: ``mode="attribution"`` only: average the gradient over this many noise
            scales ``(j − ½)/n`` along the corruption (integrated gradients, midpoint rule;
            ``1``: plain attribution patching at the corrupted point).
        budget: Rows per forward (:class:`Budget`); not recorded, it never changes a result.

    Example:
        >>> TraceConfig(steps=4).override(n_noise=2, modules="resid").corruption.n_noise
        2
    """

    steps: int = 8
    sampler: Any = None
    corruption: Corruption = field(default_factory=Corruption)
    sites: Sites = field(default_factory=Sites)
    target: str = "object"
    lp: str = "frozen"
    decay: float = 0.5
    mode: str = "exact"
    horizon: int | None = None
    patch_steps: tuple[int, ...] | None = None
    ig_steps: int = 1
    budget: Budget = field(default_factory=Budget)

    def __post_init__(self) -> None:
        _check_parts(self)
        ig = as_int(self.ig_steps)
        if not isinstance(ig, int) or isinstance(ig, bool) or ig < 1:
            raise ValueError(f"ig_steps must be an integer ≥ 1, got {self.ig_steps!r}")
        if ig > 1 and self.mode != "attribution":
            raise ValueError(
                f"ig_steps={ig} sets the attribution scan's integrated gradients; mode="
                f"{self.mode!r} runs the patches themselves: use mode='attribution' or ig_steps=1"
            )
        if ig > 1 and self.corruption.replace:
            raise ValueError(
                "integrated gradients over the corruption scale added noise; replace=True "
                "writes the embedding instead: use ig_steps=1 with replace=True"
            )
        object.__setattr__(self, "ig_steps", ig)
        steps = as_int(self.steps)
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be an integer ≥ 1, got {self.steps!r}")
        object.__setattr__(self, "steps", steps)
        if not isinstance(self.sampler, Sampler):
            object.__setattr__(self, "sampler", make_sampler(self.sampler))
        self.sampler.check_runnable()
        decay = as_real(self.decay)
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
            raise ValueError(f"decay must lie in (0, 1], got {self.decay}")
        object.__setattr__(self, "decay", decay)
        check_lp_mode(self.lp)
        check_target(self.target)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        horizon = as_int(self.horizon)
        if horizon is not None:
            if isinstance(horizon, bool) or not isinstance(horizon, int):
                raise ValueError(f"horizon must be an integer ≥ 0 or None, got {horizon!r}")
            if horizon < 0:
                raise ValueError(f"horizon must be ≥ 0 (steps after the patch), got {horizon}")
            if self.mode != "exact":
                raise ValueError(
                    f"horizon applies to mode='exact' only (mode={self.mode!r} follows no future)"
                )
        object.__setattr__(self, "horizon", horizon)
        object.__setattr__(self, "patch_steps", _patch_steps(self.patch_steps, steps))
        if self.mode == "attribution" and self.sampler.doubles_batch:
            raise ValueError(
                "mode='attribution' differentiates one plain forward; a CFG sampler "
                "(cfg_scale > 0) runs a guided pair: use mode='immediate' or 'exact'"
            )

    @property
    def temperature(self) -> float:
        """The sampler's temperature (``0.0`` for samplers without one)."""
        return float(getattr(self.sampler, "temperature", 0.0))

    @property
    def block_length(self) -> int | None:
        """The sampler's block length (``None``: one block, or a sampler without blocks)."""
        return getattr(self.sampler, "block_length", None)

    @property
    def limited(self) -> bool:
        """Whether some later step may be left out (a horizon shorter than the trajectory)."""
        return self.horizon is not None and self.horizon < self.steps - 1

    def override(self, **settings: Any) -> TraceConfig:
        """This config with ``settings`` applied (field names or the flat names of
        :data:`OVERRIDES`). Raises ``TypeError`` for an unknown name, listing the valid ones."""
        return _override(self, settings, "TraceConfig")

    def to_dict(self) -> dict:
        """The flat, JSON-ready record results carry (``"sampler"`` is its ``to_dict()``)."""
        d = {**self.sites.to_dict(), **self.corruption.to_dict()}
        d |= dict(
            steps=self.steps,
            decay=self.decay,
            temperature=self.temperature,
            block_length=self.block_length,
            lp=self.lp,
            target=self.target,
            mode=self.mode,
            horizon=self.horizon,
            sampler=self.sampler.to_dict(),
        )
        if self.patch_steps is not None:  # recorded only when used (older records lack it)
            d["patch_steps"] = list(self.patch_steps)
        if self.ig_steps > 1:  # likewise
            d["ig_steps"] = self.ig_steps
        return d


@dataclass(frozen=True, kw_only=True)
class PositionalConfig:
    """What a positional (ROME-style) trace computes (SPEC §6), validated on construction.

    Attributes:
        corruption: The noise on the subject embeddings (the same draws as TIE's).
        sites: The restored ``layers × modules``; window layers may lie outside ``layers``.
        window: Layers restored together for ``attn``/``mlp`` (1, or ROME's 10).
        budget: Rows per forward (:class:`Budget`); not recorded.
    """

    corruption: Corruption = field(default_factory=Corruption)
    sites: Sites = field(default_factory=Sites)
    window: int = 1
    budget: Budget = field(default_factory=Budget)

    def __post_init__(self) -> None:
        _check_parts(self)
        window = as_int(self.window)
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"window must be an integer ≥ 1, got {self.window!r}")
        object.__setattr__(self, "window", window)

    def override(self, **settings: Any) -> PositionalConfig:
        """This config with ``settings`` applied (see :meth:`TraceConfig.override`)."""
        return _override(self, settings, "PositionalConfig")

    def to_dict(self) -> dict:
        """The flat, JSON-ready record results carry."""
        return {**self.sites.to_dict(), **self.corruption.to_dict(), "window": self.window}


#: Flat override names → the nested config that holds them.
OVERRIDES: dict[str, str] = {
    **{name: "corruption" for name in ("noise_scale", "nu", "replace", "n_noise", "seed")},
    "mentions": "corruption",
    "layers": "sites",
    "modules": "sites",
    "max_memory": "budget",
    "batch_size": "budget",
    "temperature": "sampler",
    "block_length": "sampler",
}
_PARTS: dict[str, Any] = {"corruption": Corruption, "sites": Sites, "budget": Budget}


def _check_parts(config: Any) -> None:
    for name, kind in _PARTS.items():
        value = getattr(config, name, None)
        if hasattr(config, name) and not isinstance(value, kind):
            raise TypeError(
                f"{type(config).__name__}.{name} must be a {kind.__name__}(...), got "
                f"{type(value).__name__}: {value!r}"
            )


def step_grid(steps: int, n: int) -> tuple[int, ...]:
    """``n`` patch steps log-spaced over ``0 … T−1`` (dense early, sparse late), always
    holding ``0`` and ``T − 1``: a grid for long trajectories (``T = 64 … 128``), where the
    exact sweep over every step costs ``T²``. Rounding merges close steps, so the grid may
    hold fewer than ``n``; ``n ≥ T`` is every step.

    ``patch_steps="log:N"`` in a config is this grid.

    Example:
        >>> step_grid(128, 8)
        (0, 1, 3, 7, 15, 31, 63, 127)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"a step grid needs n ≥ 2 steps (0 and T-1 at least), got {n!r}")
    if n >= steps:
        return tuple(range(steps))
    ratio = steps ** (1.0 / (n - 1))
    grid = {0, steps - 1} | {round(ratio**i) - 1 for i in range(n)}
    return tuple(sorted(k for k in grid if 0 <= k < steps))


def _patch_steps(value: Any, steps: int) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        kind, _, count = value.partition(":")
        if kind.strip() != "log" or not count.strip().isdigit():
            if all(part.strip().lstrip("-").isdigit() for part in value.split(",")):
                value = [int(part) for part in value.split(",")]
            else:
                raise ValueError(
                    f"patch_steps {value!r}: give step numbers, or 'log:N' for N log-spaced "
                    "steps (tt.tracing.step_grid)"
                )
        else:
            return step_grid(steps, int(count))
    chosen = as_ints(value)
    chosen = (chosen,) if isinstance(chosen, int) else chosen
    if (
        not isinstance(chosen, tuple)
        or not chosen
        or any(not isinstance(k, int) or isinstance(k, bool) for k in chosen)
    ):
        raise ValueError(f"patch_steps must be step numbers 0 … T-1 or None, got {value!r}")
    outside = sorted(k for k in chosen if not 0 <= k < steps)
    if outside:
        raise ValueError(f"patch_steps {outside} outside the steps 0 … {steps - 1} (steps={steps})")
    return tuple(sorted(set(chosen)))


def valid_settings(config: Any) -> list[str]:
    """Every name ``config.override`` (and the trace functions' ``**overrides``) accepts."""
    fields = {f.name for f in dataclasses.fields(config)}
    flat = {k for k, part in OVERRIDES.items() if part in fields}
    return sorted(fields | flat)


def apply_overrides(config: Any, kind: type, overrides: dict[str, Any], what: str) -> Any:
    """``config`` (default ``kind()``) with the keyword ``overrides`` of the function ``what``
    applied; a config of another kind is a ``TypeError``."""
    if config is None:
        config = kind()
    elif not isinstance(config, kind):
        raise TypeError(
            f"{what} takes a {kind.__name__} as its config, got {type(config).__name__}: give "
            f"settings as keywords ({what}(model, facts, steps=8)) or a {kind.__name__}(...)"
        )
    return _override(config, overrides, what) if overrides else config


def _override(config: Any, settings: dict[str, Any], what: str) -> Any:
    """``config`` with ``settings`` applied: field names replace fields, flat names the field
    of the nested config that holds them (on top of a nested config given beside them)."""
    valid = valid_settings(config)
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        hints = {u: difflib.get_close_matches(u, valid, n=1) for u in unknown}
        said = ", ".join(
            f"{u!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for u, h in hints.items()
        )
        raise TypeError(f"{what} has no setting {said}; the settings are: {', '.join(valid)}")
    settings = dict(settings)
    changes: dict[str, Any] = {}
    for part in _PARTS:
        flat = {k: settings.pop(k) for k in list(settings) if OVERRIDES.get(k) == part}
        if part in settings or flat:
            base: Any = settings.pop(part, getattr(config, part))
            if not isinstance(base, _PARTS[part]):
                raise TypeError(
                    f"{part}= takes a {_PARTS[part].__name__}(...), got {type(base).__name__}"
                )
            changes[part] = dataclasses.replace(base, **flat) if flat else base
    shorthands: dict[str, Any] = {
        k: settings.pop(k)
        for k in ("temperature", "block_length")
        if k in settings and settings[k] is not None  # None: not given
    }
    if "sampler" in settings or shorthands:
        changes["sampler"] = _sampler(settings.pop("sampler", None), config, shorthands)
    return dataclasses.replace(config, **changes, **settings)


def _sampler(spec: Any, config: Any, shorthands: dict[str, Any]) -> Sampler:
    """The sampler of an override: ``spec`` with the shorthands checked against it, or the
    config's sampler with the shorthands set."""
    from ..core.samplers import resolve_sampler

    if spec is not None:
        return resolve_sampler(spec, **shorthands)
    rule = config.sampler
    for key, value in shorthands.items():
        if not hasattr(rule, key):
            raise ValueError(
                f"{key}={value!r} is a shorthand of LLaDASampler; {type(rule).__name__} has no "
                f"{key}: set it on the sampler (sampler=...)"
            )
    if "temperature" in shorthands:
        temperature = as_real(shorthands["temperature"])
        shorthands["temperature"] = (
            float(temperature) if isinstance(temperature, int) else temperature
        )
    return dataclasses.replace(rule, **shorthands)


def check_facts(facts: Any, what: str) -> list[Fact]:
    """``facts`` as a non-empty list of :class:`~tie_tracing.core.facts.Fact` with distinct ids."""
    facts = as_facts(facts, what)
    ids = [fact_key(f) for f in facts]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate fact ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    return facts


def rows_for(
    model, budget: Budget, memory: int, seq_len: int, answer_len: int, *, grad: bool = False
) -> int:
    """Rows per forward: ``budget.batch_size``, or as many as ``memory`` bytes allow."""
    if budget.batch_size is not None:
        return budget.batch_size
    return rows_per_forward(model, seq_len, answer_len, memory, grad=grad)
