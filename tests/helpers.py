"""Small helpers shared by several test files (import as `from helpers import ...`; fixtures live in conftest.py)."""
from __future__ import annotations

import socket
from pathlib import Path

import torch
from torch import nn


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_file(folder: Path, content: str | bytes, name: str = "job.yaml") -> Path:
    """`content` (text or bytes) written to `folder / name`; returns the path."""
    path = Path(folder) / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def two_layer_net() -> nn.Sequential:
    """Linear(3, 2) -> Linear(2, 2), no biases, fixed weights of mixed signs (so that the |.| in SynFlow matters)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.5, -1.0, 2.0], [-0.25, 0.75, -1.5]]))
        net[1].weight.copy_(torch.tensor([[1.0, -2.0], [-0.5, 3.0]]))
    return net
