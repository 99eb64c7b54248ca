"""The libraries people build with, handed the router where they take an openai client.

instructor, LangChain's `ChatOpenAI` and pydantic-ai run unchanged on `AsyncRouter` / `Router`
against mocked backends (`tests/openai_backends.py`) where the first deployment is down: each
test checks the answer the library produced and that the router's fallback served it. These
libraries are test extras (`pip install -e '.[test,frameworks]'`), never runtime dependencies.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import respx
from pydantic import BaseModel

from router import AsyncRouter, Router
from tests import openai_backends as backends
from tests.conftest import unavailable

pytestmark = pytest.mark.anyio
INSTALL = "pip install -e '.[test]' && pip install --no-deps 'instructor==1.17.0' (README: Tests)"


@pytest.fixture(autouse=True)
def frameworks_installed(request: pytest.FixtureRequest) -> None:
    """Each test needs its library: missing fails in CI and skips elsewhere, saying how to install it."""
    module = {"instructor": "instructor", "langchain": "langchain_openai", "pydantic_ai": "pydantic_ai"}
    for word, name in module.items():
        if word in request.node.name and importlib.util.find_spec(name) is None:
            unavailable(f"{name} is not installed: {INSTALL}")


ASK = [{"role": "user", "content": "Who is it?"}]


class Person(BaseModel):
    name: str
    age: int


def fell_back(seen: dict[str, list[dict[str, Any]]]) -> None:
    """`down` was tried and failed; `up` answered."""
    assert seen["down"] and seen["up"]


# --- instructor ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["TOOLS", "JSON_SCHEMA"])
async def test_instructor_async_extracts_a_model(httpx2_mock: respx.Router, mode: str) -> None:
    import instructor

    seen = backends.mock(httpx2_mock)
    async with AsyncRouter(backends.config()) as router:
        client = instructor.from_openai(router, mode=getattr(instructor.Mode, mode))
        person = await client.chat.completions.create(model="chat", messages=ASK, response_model=Person)
    assert isinstance(person, Person) and person.model_dump() == {"name": "Ada", "age": 36}
    fell_back(seen)
    asked = seen["up"][-1]
    assert ("tools" in asked) if mode == "TOOLS" else asked["response_format"]["type"] == "json_schema"


def test_instructor_sync_extracts_a_model(httpx2_mock: respx.Router) -> None:
    import instructor

    seen = backends.mock(httpx2_mock)
    with Router(backends.config()) as router:
        client = instructor.from_openai(router, mode=instructor.Mode.TOOLS)
        person = client.chat.completions.create(model="chat", messages=ASK, response_model=Person)
    assert isinstance(person, Person) and person.model_dump() == {"name": "Ada", "age": 36}
    fell_back(seen)


# --- LangChain ----------------------------------------------------------------------------------


def chat_model(router: AsyncRouter, sync_router: Router | None = None) -> Any:
    """`ChatOpenAI` over the router: the documented way to hand it ready-made openai clients."""
    from langchain_openai import ChatOpenAI

    clients: dict[str, Any] = {"root_async_client": router, "async_client": router.chat.completions}
    if sync_router is not None:
        clients |= {"root_client": sync_router, "client": sync_router.chat.completions}
    return ChatOpenAI(model="chat", api_key="unused", include_response_headers=True, **clients)


async def test_langchain_invoke_stream_tools_and_structured_output(httpx2_mock: respx.Router) -> None:
    seen = backends.mock(httpx2_mock)
    async with AsyncRouter(backends.config()) as router:
        llm = chat_model(router)
        reply = await llm.ainvoke("Who is it?")
        pieces = [chunk.content async for chunk in llm.astream("Who is it?")]
        called = await llm.bind_tools([Person]).ainvoke("Who is it?")
        structured = await llm.with_structured_output(Person).ainvoke("Who is it?")
    assert reply.content == "Hello from up."
    headers = reply.response_metadata["headers"]  # the route record, as the router's response headers
    assert headers["x-inference-router-backend"] == "up"
    assert headers["x-inference-router-tried"] == "down/m-down:overloaded, up/m-up:ok"
    assert "".join(str(p) for p in pieces) == "Hello from up."
    assert called.tool_calls[0]["name"] == "Person" and called.tool_calls[0]["args"] == {"name": "Ada", "age": 36}
    assert structured == Person(name="Ada", age=36)
    fell_back(seen)


def test_langchain_sync_invoke(httpx2_mock: respx.Router) -> None:
    seen = backends.mock(httpx2_mock)
    with Router(backends.config()) as sync_router:
        llm = chat_model(AsyncRouter(_engine=sync_router.engine), sync_router)
        reply = llm.invoke("Who is it?")
    assert reply.content == "Hello from up."
    fell_back(seen)


# --- pydantic-ai --------------------------------------------------------------------------------


def agent_over(router: AsyncRouter, output_type: Any) -> Any:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel("chat", provider=OpenAIProvider(openai_client=router))
    return Agent(model, output_type=output_type)


async def test_pydantic_ai_structured_output_and_streaming(httpx2_mock: respx.Router) -> None:
    seen = backends.mock(httpx2_mock)
    async with AsyncRouter(backends.config()) as router:
        result = await agent_over(router, Person).run("Who is it?")
        async with agent_over(router, str).run_stream("Who is it?") as streamed:
            text = await streamed.get_output()
    assert result.output == Person(name="Ada", age=36)
    assert text == "Hello from up."
    fell_back(seen)
