"""Test-wide settings: no network, few threads, deterministic seeds."""

from __future__ import annotations

import os
import socket
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"  # tiny models: threads cost more than they give, and tests spawn processes

import pytest
import torch

_LOOPBACK = ("127.", "::1", "localhost")
_real_connect = socket.socket.connect


def _loopback_only_connect(self: socket.socket, address) -> None:  # type: ignore[no-untyped-def]
    host = address[0] if isinstance(address, tuple) else str(address)
    if self.family in (socket.AF_INET, socket.AF_INET6) and not str(host).startswith(_LOOPBACK):
        raise RuntimeError(f"tests must not touch the network (tried to connect to {address})")
    _real_connect(self, address)


socket.socket.connect = _loopback_only_connect  # type: ignore[method-assign]


torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def isolated_registries():
    """Components that a test's plugins register exist for that test only (and its plugin modules are forgotten)."""
    from multitask_deeplab.engine.build import REGISTRIES

    saved = {name: dict(registry._entries) for name, registry in REGISTRIES.items()}
    modules = set(sys.modules)
    yield
    for name, registry in REGISTRIES.items():
        registry._entries.clear()
        registry._entries.update(saved[name])
    for module in set(sys.modules) - modules:
        if module.startswith("mtdl_plugin_"):
            del sys.modules[module]
