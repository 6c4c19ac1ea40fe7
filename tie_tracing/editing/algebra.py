"""The closed-form algebra of the edit memory, as pure functions on tensors (no model, no state).

Shapes: ``N`` facts, ``d`` hidden size, ``...`` any leading token axes.

* Ridge memory (Eq. 11–12): ``G = K Kᵀ + λ_abs I_N`` with ``λ_abs = λ · mean(diag(K Kᵀ))``
  (:func:`lam_abs`), factorised by Cholesky in float64 (:func:`factorize`, never an explicit
  inverse); ``c = G⁻¹ K h`` (:func:`coefficients`); ``Δh = α Dᵀ top_q(g ⊙ c)``
  (:func:`ridge_update`, ``g`` the optional per-fact gate). Dense and ungated it equals the
  primal map ``Δh = α Wᵀh`` with ``W = (KᵀK + λ_abs I_d)⁻¹ KᵀD`` (:func:`primal_map`) by the
  push-through identity ``Kᵀ(KKᵀ + λI)⁻¹ = (KᵀK + λI)⁻¹Kᵀ``.
* Eq. 10 summed over facts: ``Δh = α Σ_f g_f clip(⟨h, k_f⟩/⟨k_f, k_f⟩, 0, κ) δ_f``
  (:func:`eq10_update`).
* Subject detection: a shrunk whitener ``C_s^{-½}`` of residuals (:func:`whitener`) and the
  best window cosine ``score_f`` (:func:`window_scores`).

Every function is deterministic and tested on synthetic tensors (``tests/test_editing.py``).
"""

from __future__ import annotations

import torch

from .config import EditMemoryError

__all__ = [
    "MIN_RCOND",
    "coefficients",
    "eq10_gate_keys",
    "eq10_update",
    "factorize",
    "factorize_blocks",
    "lam_abs",
    "length_groups",
    "primal_map",
    "ridge_update",
    "top_q",
    "whitened_directions",
    "whitener",
    "window_scores",
]

#: Smallest accepted squared pivot ratio of the Cholesky factor (a cheap reciprocal-condition
#: estimate); below it ``G`` counts as singular.
MIN_RCOND = 1e-10


def lam_abs(keys: torch.Tensor, lam: float) -> float:
    """``λ_abs = λ · mean_f ‖k_f‖²`` (``λ · mean(diag(K Kᵀ))``) for ``keys [N, d]``."""
    if keys.shape[0] == 0:
        return 0.0
    return float(lam * (keys.double() ** 2).sum(-1).mean())


def factorize(keys: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chol, G⁻¹K)``: the Cholesky factor of ``G = K Kᵀ + λ_abs I`` and ``G⁻¹K``, float64.

    Args:
        keys: ``[N, d]``.
        lam: Scale-free ``λ ≥ 0``.

    Returns:
        ``chol [N, N]`` (lower) and ``coef [N, d] = G⁻¹ K`` (``cholesky_solve``).

    Raises:
        EditMemoryError: ``G`` is (numerically) singular — linearly dependent keys with
            ``λ = 0`` (duplicated facts, or ``N > d``); no jitter is added silently.
    """
    k = keys.double()
    n = k.shape[0]
    gram = k @ k.T
    gram = gram + lam * float(gram.diagonal().mean()) * torch.eye(n, dtype=torch.float64)
    chol, info = torch.linalg.cholesky_ex(gram)
    pivots = chol.diagonal()
    if int(info) != 0 or float((pivots.min() / pivots.max()) ** 2) < MIN_RCOND:
        raise EditMemoryError(
            f"the Gram matrix K Kᵀ + λ_abs I of {n} keys is (numerically) singular (λ={lam:g}): "
            f"the keys are linearly dependent (duplicated facts, or N={n} > d={k.shape[1]}). "
            "Use lam > 0 (e.g. 1e-3)."
        )
    coef = torch.cholesky_solve(k, chol)
    if not torch.isfinite(coef).all():
        raise EditMemoryError("the ridge solve produced non-finite coefficients; raise lam")
    return chol, coef


def factorize_blocks(keys: torch.Tensor, lam: float, groups: torch.Tensor) -> torch.Tensor:
    """``[N, d]`` ``G_B⁻¹K`` for the block-diagonal ``G_B = blockdiag_g(K_g K_gᵀ + λ_g I)``.

    Facts with the same ``groups`` label form one block (one ridge per subject), each with its
    own scale-free ridge ``λ_g = λ · mean(diag(K_g K_gᵀ))``: a fact's coefficient depends only
    on the keys of its own group, so adding facts of other groups never changes it. With a
    single group this is :func:`factorize`'s ``G⁻¹K``.

    Args:
        keys: ``[N, d]``.
        lam: Scale-free ``λ ≥ 0``.
        groups: ``[N]`` integer group label per fact.

    Raises:
        EditMemoryError: a block is (numerically) singular (see :func:`factorize`).
    """
    k = keys.double()
    coef = torch.empty_like(k)
    for label in torch.unique(groups).tolist():
        idx = torch.nonzero(groups == label).flatten()
        kg = k[idx]
        gram = kg @ kg.T
        gram = gram + lam * float(gram.diagonal().mean()) * torch.eye(len(idx), dtype=torch.float64)
        chol, info = torch.linalg.cholesky_ex(gram)
        pivots = chol.diagonal()
        if int(info) != 0 or float((pivots.min() / pivots.max()) ** 2) < MIN_RCOND:
            raise EditMemoryError(
                f"the Gram block of {len(idx)} keys of one subject is (numerically) singular "
                f"(λ={lam:g}): linearly dependent keys. Use lam > 0 (e.g. 1e-3)."
            )
        coef[idx] = torch.cholesky_solve(kg, chol)
    if not torch.isfinite(coef).all():
        raise EditMemoryError("the ridge solve produced non-finite coefficients; raise lam")
    return coef


def coefficients(hidden: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``[..., N]`` ridge fact-coefficients ``c = G⁻¹ K h`` (Eq. 11) for ``hidden [..., d]``."""
    return hidden @ coef.T


def top_q(c: torch.Tensor, q: int) -> torch.Tensor:
    """``c`` with all but its ``q`` largest-magnitude entries (last axis) set to zero."""
    if q >= c.shape[-1]:
        return c
    idx = c.abs().topk(q, dim=-1).indices
    return torch.zeros_like(c).scatter(-1, idx, c.gather(-1, idx))


def ridge_update(
    hidden: torch.Tensor,
    coef: torch.Tensor,
    deltas: torch.Tensor,
    *,
    alpha: float,
    q: int,
    gate: torch.Tensor | None = None,
    dense_map: torch.Tensor | None = None,
) -> torch.Tensor:
    """``α Dᵀ top_q(g ⊙ G⁻¹K h)`` (Eq. 12, with an optional gate) for ``hidden [..., d]``.

    Args:
        hidden: ``[..., d]``.
        coef: ``[N, d]`` ``G⁻¹K``.
        deltas: ``[N, d]`` ``D``.
        alpha: ``α``.
        q: Kept coefficients (``≥ N``: dense).
        gate: Optional ``[..., N]`` (broadcastable) per-fact gate ``g`` applied before ``top_q``.
        dense_map: Optional ``[d, d]`` ``(G⁻¹K)ᵀD``, used for the dense, ungated case (one
            product instead of two through ``R^N``; worth it when ``N > d``).

    Returns:
        ``[..., d]``.
    """
    n = coef.shape[0]
    if q >= n and gate is None and dense_map is not None:
        return alpha * (hidden @ dense_map)
    if gate is not None:
        # only facts whose gate is open somewhere contribute: drop the others' columns (a
        # gated memory usually has a few open facts among many; top_q never keeps a zero
        # that a dropped column would have given, unless fewer than q are open — then all
        # open ones are kept either way)
        gate = gate.expand(*hidden.shape[:-1], n)
        cols = torch.nonzero(gate.reshape(-1, n).any(0)).flatten()
        if len(cols) < n:
            coef, deltas, gate = coef[cols], deltas[cols], gate[..., cols]
            n, q = len(cols), min(q, len(cols))
            if n == 0:
                return torch.zeros_like(hidden)
    c = hidden @ coef.T
    if gate is not None:
        c = c * gate
    if q >= n:
        return alpha * (c @ deltas)
    idx = c.abs().topk(q, dim=-1).indices
    kept = c.gather(-1, idx)
    if q == 1:
        return alpha * (kept * deltas[idx[..., 0]])
    # Σ_j c_j δ_j over the q kept facts only (no dense [.., N] scatter and product)
    return alpha * torch.einsum("...q,...qd->...d", kept, deltas[idx])


def primal_map(keys: torch.Tensor, deltas: torch.Tensor, lam_abs_value: float) -> torch.Tensor:
    """``[d, d]`` ``W = (KᵀK + λ_abs I_d)⁻¹ KᵀD`` (float64, Cholesky solve).

    Dense ungated Eq. 12 equals ``α hᵀW``. Needs ``λ_abs > 0`` when ``N < d``.

    Raises:
        EditMemoryError: ``KᵀK + λ_abs I_d`` is singular.
    """
    k, delta = keys.double(), deltas.double()
    d = k.shape[1]
    a = k.T @ k + lam_abs_value * torch.eye(d, dtype=torch.float64)
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:
        raise EditMemoryError(
            "KᵀK + λ_abs I_d is singular (λ = 0 with N < d); the primal map needs lam > 0"
        )
    return torch.cholesky_solve(k.T @ delta, chol)


def eq10_gate_keys(keys: torch.Tensor) -> torch.Tensor:
    """``[N, d]`` ``k_f / ⟨k_f, k_f⟩`` so that ``h @ outᵀ`` is Eq. 10's raw gate.

    Raises:
        EditMemoryError: an all-zero key (the gate is undefined).
    """
    norms = (keys.double() ** 2).sum(-1)
    if (norms == 0).any():
        bad = torch.nonzero(norms == 0).flatten().tolist()
        raise EditMemoryError(f"keys {bad} are all zero; the gate ⟨h,k⟩/⟨k,k⟩ is undefined")
    return keys.double() / norms[:, None]


def eq10_update(
    hidden: torch.Tensor,
    gate_keys: torch.Tensor,
    deltas: torch.Tensor,
    *,
    alpha: float,
    kappa: float,
    gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """``α Σ_f g_f clip(⟨h, k_f⟩/⟨k_f, k_f⟩, 0, κ) δ_f`` for ``hidden [..., d]`` (Eq. 10).

    ``gate_keys`` from :func:`eq10_gate_keys`; ``gate`` an optional ``[..., N]`` detection gate.
    """
    g = (hidden @ gate_keys.T).clamp(0.0, kappa)
    if gate is not None:
        g = g * gate
    return alpha * (g @ deltas)


# ----------------------------------------------------------------------- subject detection


def whitener(residuals: torch.Tensor, shrinkage: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(μ, C_s^{-½})`` of ``residuals [M, d]``, float64.

    ``C`` is the (biased) covariance of the rows; ``C_s = (1 − s) C + s · (tr C / d) I`` with
    ``s = shrinkage ∈ (0, 1]`` (shrinkage towards a scaled identity, so ``C_s`` is positive
    definite even with ``M < d``); ``C_s^{-½} = V diag(λ^{-½}) Vᵀ`` from ``eigh`` (symmetric).

    Raises:
        EditMemoryError: fewer than two rows, ``shrinkage`` outside ``(0, 1]``, or zero variance.
    """
    if not 0.0 < shrinkage <= 1.0:
        raise EditMemoryError(f"gate_shrinkage must lie in (0, 1], got {shrinkage}")
    x = residuals.double()
    if x.shape[0] < 2:
        raise EditMemoryError(f"the whitener needs at least 2 residual rows, got {x.shape[0]}")
    mu = x.mean(0)
    xc = x - mu
    cov = xc.T @ xc / x.shape[0]
    d = cov.shape[0]
    scale = float(cov.diagonal().sum()) / d
    if not scale > 0:
        raise EditMemoryError("the calibration residuals have zero variance")
    cov_s = (1.0 - shrinkage) * cov + shrinkage * scale * torch.eye(d, dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(cov_s)
    return mu, (evecs * evals.clamp_min(1e-300).rsqrt()) @ evecs.T


def whitened_directions(
    keys: torch.Tensor, mean: torch.Tensor, whiten: torch.Tensor
) -> torch.Tensor:
    """``[N, d]`` unit vectors ``C_s^{-½}(k_f − μ) / ‖·‖`` (``whiten`` is symmetric)."""
    z = (keys.to(whiten.dtype) - mean) @ whiten
    return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def length_groups(lengths: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """``[(L, indices of the facts with |S_f| = L)]`` in increasing ``L``."""
    return [
        (length, torch.nonzero(lengths == length).flatten())
        for length in sorted({int(x) for x in lengths.tolist()})
    ]


def window_scores(
    u: torch.Tensor,
    valid: torch.Tensor,
    directions: torch.Tensor,
    lengths: torch.Tensor,
    groups: list[tuple[int, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """``[B, N]`` ``score_f = max_W cos(mean_{i∈W} u_i, z_f)`` over windows ``W`` of
    ``lengths[f]`` consecutive valid positions (``-inf`` where a row has no such window).

    Args:
        u: ``[B, S, d]`` whitened, centred token states ``C_s^{-½}(h_i − μ)``.
        valid: ``[B, S]`` bool, the positions windows may cover (non-``[MASK]`` tokens).
        directions: ``[N, d]`` unit vectors from :func:`whitened_directions`.
        lengths: ``[N]`` window length per fact (``|S_f|``, ``≥ 1``).

    Whitening is linear, so ``C_s^{-½}(mean_W h − μ) = mean_W u``; the window mean's scale
    does not change a cosine, so windows are summed. ``groups`` (from :func:`length_groups`,
    indices on ``u``'s device) saves regrouping the facts on every call.
    """
    b, s, _ = u.shape
    n = directions.shape[0]
    groups = length_groups(lengths) if groups is None else groups
    out = torch.full((b, n), float("-inf"), dtype=u.dtype, device=u.device)
    for length, idx in groups:
        if length > s:
            continue
        win = u.unfold(1, length, 1).sum(-1)  # [B, W, d]
        ok = valid.unfold(1, length, 1).all(-1)  # [B, W]
        win = win / win.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        dirs = directions if len(groups) == 1 else directions[idx.to(u.device)]
        sim = (win @ dirs.T).masked_fill(~ok[..., None], float("-inf"))  # [B, W, n_L]
        if len(groups) == 1:
            return sim.amax(1)
        out[:, idx.to(u.device)] = sim.amax(1)
    return out


def token_matches(
    token_ids: torch.Tensor, valid: torch.Tensor, patterns: torch.Tensor
) -> torch.Tensor:
    """``[B, N]`` bool: fact ``f``'s subject tokens occur consecutively among the valid tokens.

    Args:
        token_ids: ``[B, S]`` int64 input ids.
        valid: ``[B, S]`` bool, the positions a match may cover (the prompt's tokens).
        patterns: ``[N, L]`` int64 subject token ids, padded on the right with ``-1`` (a
            row of ``-1`` never matches).

    ``g_f = 1[∃ j: x_{j+t} = p_{f,t} and valid_{j+t} for t < |p_f|]``, computed per pattern
    length with one unfolded comparison (no Python loop over facts). Callers with many facts
    per subject pass the distinct patterns and index the result (see ``EditMemory``).
    """
    b, s = token_ids.shape
    n = patterns.shape[0]
    out = torch.zeros((b, n), dtype=torch.bool, device=token_ids.device)
    lengths = (patterns >= 0).sum(-1)
    for length in sorted({int(x) for x in lengths.tolist()}):
        if length == 0 or length > s:
            continue
        idx = torch.nonzero(lengths == length).flatten().to(token_ids.device)
        pat = patterns[idx, :length].to(token_ids.device)  # [n_L, L]
        win = token_ids.unfold(1, length, 1)  # [B, W, L]
        ok = valid.unfold(1, length, 1).all(-1)  # [B, W]
        hit = (win[:, :, None, :] == pat[None, None]).all(-1) & ok[..., None]  # [B, W, n_L]
        out[:, idx] = hit.any(1)
    return out
