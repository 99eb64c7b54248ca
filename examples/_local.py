"""Shared by the examples: start a local llama.cpp server when no config is given, so they run offline."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def example_config() -> Iterator[str | dict[str, Any]]:
    """`python example.py CONFIG` uses CONFIG; with no argument, a throwaway llama.cpp server."""
    if len(sys.argv) > 1:
        yield sys.argv[1]
        return
    from router.local.llamacpp_server import LlamaCppServer
    from router.local.tiny_gguf import write_tiny_gguf

    with tempfile.TemporaryDirectory() as folder:
        model = write_tiny_gguf(Path(folder) / "tiny.gguf")
        with LlamaCppServer(model, log_path=Path(folder) / "server.log") as server:
            yield {
                "backends": {"laptop": {"provider": "llamacpp", "base_url": server.base_url}},
                "models": {"local": {"deployments": [{"backend": "laptop", "model": "tiny-llama"}]}},
            }
