"""Streaming: chunks arrive as from openai; a break after the first token raises, never truncates.

python examples/streaming.py [CONFIG]
"""

import anyio
from _local import example_config

from router import AsyncRouter, StreamInterruptedError, route_of


async def main(config: object) -> None:
    async with AsyncRouter.from_config(config) as client:
        stream = await client.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": "Stream me a story."}],
            max_tokens=48,
            stream=True,
            stream_options={"include_usage": True},
        )
        try:
            async with stream:  # closing early releases the connection
                async for chunk in stream:
                    if chunk.choices:
                        print(chunk.choices[0].delta.content or "", end="", flush=True)
                    elif chunk.usage:
                        print(f"\n[{chunk.usage.completion_tokens} tokens]")
        except StreamInterruptedError as error:
            print(f"\nthe backend broke mid-answer; we had {len(error.partial_text)} characters")
        record = route_of(stream)
        print(record.summary(), f"TTFT {record.ttft_s:.3f}s" if record.ttft_s else "")


if __name__ == "__main__":
    with example_config() as config:
        anyio.run(main, config)
