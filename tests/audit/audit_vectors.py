"""Where the public test vectors live: ``<repo>/../shared/vectors`` (see the preamble).

Imported by name (``from audit_vectors import VECTORS``): pytest puts this directory on
``sys.path`` because it has no ``__init__.py``; keep it that way.
"""

from __future__ import annotations

from pathlib import Path

# <repo>/tests/audit/audit_vectors.py -> parents[2] is <repo>
VECTORS = (Path(__file__).resolve().parents[2] / ".." / "shared" / "vectors").resolve()

if not VECTORS.is_dir():  # fail loudly at collection instead of parametrizing nothing
    raise RuntimeError(f"public test vectors not found at {VECTORS}")
