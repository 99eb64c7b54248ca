"""Async quick start: the one-line change from `openai.AsyncOpenAI`.

python examples/quickstart.py                      # offline, on a local llama.cpp server
python examples/quickstart.py examples/router.yaml # your backends (set the API keys first)
"""

import anyio
from _local import example_config

from router import AsyncRouter, route_of


async def main(config: object) -> None:
    # client = openai.AsyncOpenAI()                     # before
    client = AsyncRouter.from_config(config)  # after: same calls, same types, same errors
    async with client:
        reply = await client.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": "What is a router?"}],
            max_tokens=32,
        )
        print(reply.choices[0].message.content)
        print(route_of(reply).summary())  # who served it, what was tried, how long


if __name__ == "__main__":
    with example_config() as config:
        anyio.run(main, config)
