"""The ``proof-messenger`` command.

Exit codes are part of the interface: 0 success, 1 a proof was rejected (the protocol
error code is printed on stderr), 2 a usage or input error.
"""

from __future__ import annotations

import click

from .. import __version__
from .proofs import inspect_cmd, keygen, sign, verify


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="proof-messenger")
def cli() -> None:
    """Create and verify non-repudiable approvals of exact transactions."""


cli.add_command(keygen)
cli.add_command(sign)
cli.add_command(verify)
cli.add_command(inspect_cmd)


def _register_optional() -> None:
    """Relay-side command groups live in their own modules; each adds itself here."""
    from importlib import import_module

    for name in ("serve", "apikey", "audit", "db", "log", "policy", "masterkey"):
        try:
            module = import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{name}":
                raise
            continue
        cli.add_command(module.command)


_register_optional()


def main() -> None:
    cli(prog_name="proof-messenger")
