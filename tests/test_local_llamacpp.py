"""Quick checks of a real llama.cpp server (xllamacpp) on loopback, serving the tiny GGUF model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from router.local.llamacpp_server import LlamaCppServer, LlamaCppServerError
from router.local.tiny_gguf import write_tiny_gguf
from tests.conftest import require_local_extra

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, generated once for this module."""
    require_local_extra()
    return write_tiny_gguf(tmp_path_factory.mktemp("llamacpp") / "tiny.gguf")


@pytest.fixture(scope="module")
def server(model: Path) -> Iterator[LlamaCppServer]:
    """One server shared by the read-only tests."""
    with LlamaCppServer(model, log_path=model.with_name("server.log")) as srv:
        yield srv


@pytest.fixture
def client(server: LlamaCppServer) -> openai.OpenAI:
    """An OpenAI client for the shared server, without retries so failures show at once."""
    return openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)


def test_tiny_gguf_is_reproducible(tmp_path: Path) -> None:
    """The same seed gives the same bytes; another seed gives another model."""
    a = write_tiny_gguf(tmp_path / "a.gguf").read_bytes()
    assert a == write_tiny_gguf(tmp_path / "b.gguf").read_bytes()
    assert a != write_tiny_gguf(tmp_path / "c.gguf", seed=1).read_bytes()


def test_models_lists_alias(client: openai.OpenAI) -> None:
    """The model id is the alias (model_alias must be passed to xllamacpp as a set)."""
    assert [m.id for m in client.models.list()] == ["tiny-llama"]


def test_max_tokens_gives_exactly_n_tokens(client: openai.OpenAI) -> None:
    """max_tokens=N yields N printable ASCII tokens and finish_reason "length"."""
    r = client.chat.completions.create(model="tiny-llama", messages=HI, max_tokens=8)
    assert r.usage is not None and r.usage.completion_tokens == 8
    assert r.choices[0].finish_reason == "length"
    text = r.choices[0].message.content or ""
    assert len(text) == 8 and text.isascii() and text.isprintable()


def test_stream_ends_with_usage_chunk(client: openai.OpenAI) -> None:
    """With include_usage the last chunk carries usage and no choices."""
    chunks = list(
        client.chat.completions.create(
            model="tiny-llama",
            messages=HI,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 8
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text) == 8
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_logit_bias_forces_stop(client: openai.OpenAI) -> None:
    """A +100 bias on </s> (id 2) ends the reply at once with finish_reason "stop"."""
    r = client.chat.completions.create(model="tiny-llama", messages=HI, max_tokens=8, logit_bias={"2": 100})
    assert r.choices[0].finish_reason == "stop"


def test_temperature_zero_is_repeatable(client: openai.OpenAI) -> None:
    """Greedy decoding returns the same text twice."""
    texts = [
        client.chat.completions.create(model="tiny-llama", messages=HI, max_tokens=16, temperature=0)
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert texts[0] == texts[1] and len(texts[0] or "") == 16


def test_metrics_endpoint(server: LlamaCppServer) -> None:
    """The Prometheus /metrics endpoint is enabled."""
    r = httpx2.get(f"{server.root_url}/metrics", trust_env=False)
    assert r.status_code == 200 and "llamacpp:requests_processing" in r.text


def test_prompt_longer_than_context_is_400(client: openai.OpenAI, server: LlamaCppServer) -> None:
    """A prompt beyond the per-slot context is rejected with 400."""
    too_long: list[ChatCompletionMessageParam] = [{"role": "user", "content": "x" * (server.ctx_per_slot + 100)}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny-llama", messages=too_long, max_tokens=4)
    assert info.value.status_code == 400


def test_port_in_use_is_refused(model: Path, server: LlamaCppServer) -> None:
    """A second server on a port that is already served refuses to start."""
    with pytest.raises(LlamaCppServerError, match="already in use"):
        LlamaCppServer(model, port=server.port).start()


def test_killed_server_gives_connection_error(model: Path, tmp_path: Path) -> None:
    """After kill() the backend is gone: requests fail with APIConnectionError."""
    with LlamaCppServer(model, log_path=tmp_path / "server.log") as srv:
        dead = openai.OpenAI(base_url=srv.base_url, api_key="none", max_retries=0)
        assert dead.chat.completions.create(model="tiny-llama", messages=HI, max_tokens=2).usage
        srv.kill()
        assert not srv.running
        with pytest.raises(openai.APIConnectionError):
            dead.chat.completions.create(model="tiny-llama", messages=HI, max_tokens=2)
