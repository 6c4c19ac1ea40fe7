"""tie_tracing: diffusion-time causal tracing and edit memories for masked diffusion LMs.

Import as ``import tie_tracing as tt``. Each public name below is documented where it is
defined; ``SPEC.md`` in the repository gives the equations.
"""

from ._version import __version__
from .errors import (
    CheckpointNotFoundError,
    NonFiniteActivationError,
    ShapeError,
    SubjectNotFoundError,
    TieTracingError,
    UnsupportedModelError,
)
# -- public names by module (one line per module; keep this block sorted by data flow) --
