"""The top-level package re-exports the protocol API, lazily (``proof_messenger/__init__.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import proof_messenger
from proof_messenger import protocol
from tests.conftest import REPO


def test_the_name_list_is_the_protocol_api() -> None:
    assert proof_messenger.__all__ == ["__version__", *protocol.__all__]


def test_every_name_resolves_to_the_protocol_object() -> None:
    for name in protocol.__all__:
        assert getattr(proof_messenger, name) is getattr(protocol, name), name
    assert "Proof" in dir(proof_messenger) and "cli" not in proof_messenger.__all__


def test_star_import_gives_the_same_names() -> None:
    namespace: dict[str, object] = {}
    exec("from proof_messenger import *", namespace)
    assert {k for k in namespace if k != "__builtins__"} == set(proof_messenger.__all__)


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = proof_messenger.nope  # type: ignore[attr-defined]


def test_importing_the_package_or_a_subpackage_does_not_import_the_protocol() -> None:
    code = """
import json, sys
import proof_messenger, proof_messenger.relay.config, proof_messenger.store.base
before = "proof_messenger.protocol" in sys.modules
from proof_messenger import Proof
print(json.dumps([before, "proof_messenger.protocol" in sys.modules, Proof.__module__]))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=env, timeout=60, check=True
    )
    assert json.loads(out.stdout) == [False, True, "proof_messenger.protocol.envelope"]
