"""Defaults shared by every public function, so one name means one default across the package.

* ``batch_size`` (rows per forward of the functions that batch fact queries themselves:
  :func:`~tie_tracing.core.likelihood.answer_logprob`, :func:`~tie_tracing.core.sampler.diffuse`,
  ``evaluate``, the edit memory's capture and gate): :data:`BATCH_SIZE`. Tracing sizes its
  batches from a memory budget instead (``Budget(batch_size=None)``: rows per forward from
  ``max_memory``; an integer overrides it), and ``unlearn``'s ``batch_size`` is the
  optimiser's minibatch (facts per step), a different quantity with its own default.
* ``progress`` (a progress bar over facts or steps): :data:`PROGRESS` everywhere it is taken,
  except ``load_model``'s, which switches transformers' own weight-loading bar (``None``: on
  for local checkpoints only). Code that calls a public function inside its own loop passes
  ``progress=False``.
"""

from __future__ import annotations

__all__ = ["BATCH_SIZE", "PROGRESS"]

#: Rows per forward when a function batches fact queries itself.
BATCH_SIZE = 64
#: Whether a function that loops over facts or training steps shows a progress bar.
PROGRESS = True
