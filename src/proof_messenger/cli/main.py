"""The ``proof-messenger`` command.

Exit codes are part of the interface: 0 success, 1 a proof was rejected (the protocol
error code is printed on stderr), 2 a usage or input error.
"""

from __future__ import annotations

from importlib import import_module

import click

from .. import __version__

#: Every command, imported only when used (module, attribute): the offline commands
#: (keygen, sign, verify, inspect) start without loading the web stack, and ``serve``
#: reaches uvicorn without importing rich (the offline commands' tables) or the other
#: command groups.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "keygen": ("proof_messenger.cli.proofs", "keygen"),
    "sign": ("proof_messenger.cli.proofs", "sign"),
    "verify": ("proof_messenger.cli.proofs", "verify"),
    "inspect": ("proof_messenger.cli.proofs", "inspect_cmd"),
    "serve": ("proof_messenger.cli.serve", "command"),
    "apikey": ("proof_messenger.cli.apikey", "command"),
    "audit": ("proof_messenger.cli.audit", "command"),
    "db": ("proof_messenger.cli.db", "command"),
    "log": ("proof_messenger.cli.log", "command"),
    "masterkey": ("proof_messenger.cli.masterkey", "command"),
    "policy": ("proof_messenger.cli.policy", "command"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, attribute = LAZY_COMMANDS[name]
            command: click.Command = getattr(import_module(module), attribute)
            return command
        return super().get_command(ctx, name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="proof-messenger")
def cli() -> None:
    """Create and verify non-repudiable approvals of exact transactions."""


def main() -> None:
    cli(prog_name="proof-messenger")
