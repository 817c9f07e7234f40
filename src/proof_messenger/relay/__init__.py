"""The relay: the ASGI app, its routes and feature extensions.

Importing the package first imports structlog without ``rich`` (see
:func:`.logs.import_structlog`), before any relay module imports structlog itself.
"""

from . import logs as _logs  # noqa: F401
