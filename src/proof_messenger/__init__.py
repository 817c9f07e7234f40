"""Proof-Messenger: non-repudiable transaction approval.

The public API of the protocol library is re-exported here; the relay, store,
SDK and CLI live in their own subpackages.

The re-export is lazy (PEP 562): ``from proof_messenger import Proof`` and
``from proof_messenger import *`` work as before, but importing a subpackage (the
CLI, the ``serve`` parent, the store) does not import the protocol core with it
(eleven modules whose dataclasses cost the ``serve`` parent about 9% of its CPU
before the workers start).
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


def _submodules() -> frozenset[str]:
    """The subpackages and modules of this package: ``from proof_messenger import cli``
    asks this module for ``cli`` first, which must not load the protocol core. (Unlisted,
    a name is still found; it only costs that import.)"""
    try:
        return frozenset(
            entry.name.removesuffix(".py") for entry in os.scandir(os.path.dirname(__file__))
        )
    except OSError:  # not a directory on disk (e.g. a zip): nothing is skipped
        return frozenset()


_SUBMODULES = _submodules()

if TYPE_CHECKING:
    from .protocol import *  # noqa: F403
    from .protocol import __all__ as _protocol_all

    __all__ = ["__version__", *_protocol_all]
else:  # hidden from type checkers, so that a misspelt name is still reported

    def __getattr__(name: str) -> Any:
        if name in _SUBMODULES or (name.startswith("__") and name != "__all__"):
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        protocol = import_module(".protocol", __name__)
        if name == "__all__":
            value: Any = ["__version__", *protocol.__all__]
        elif name in protocol.__all__:
            value = getattr(protocol, name)
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        globals()[name] = value  # looked up once
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__getattr__("__all__")})
