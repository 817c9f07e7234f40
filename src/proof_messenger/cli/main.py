"""The ``proof-messenger`` command.

Exit codes are part of the interface: 0 success, 1 a proof was rejected (the protocol
error code is printed on stderr), 2 a usage or input error.
"""

from __future__ import annotations

from importlib import import_module

import click

from .. import __version__
from .proofs import inspect_cmd, keygen, sign, verify

#: Relay-side command groups, imported only when used, so that the offline commands
#: (keygen, sign, verify, inspect) start without loading the web stack.
LAZY_COMMANDS: dict[str, str] = {
    "serve": "proof_messenger.cli.serve",
    "apikey": "proof_messenger.cli.apikey",
    "audit": "proof_messenger.cli.audit",
    "db": "proof_messenger.cli.db",
    "log": "proof_messenger.cli.log",
    "masterkey": "proof_messenger.cli.masterkey",
    "policy": "proof_messenger.cli.policy",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            command: click.Command = import_module(LAZY_COMMANDS[name]).command
            return command
        return super().get_command(ctx, name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="proof-messenger")
def cli() -> None:
    """Create and verify non-repudiable approvals of exact transactions."""


cli.add_command(keygen)
cli.add_command(sign)
cli.add_command(verify)
cli.add_command(inspect_cmd)


def main() -> None:
    cli(prog_name="proof-messenger")
