"""The blocking client, a drop-in for `openai.OpenAI`; errors are openai's exception classes.

python examples/sync_client.py [CONFIG]
"""

import openai
from _local import example_config

from router import Router, route_of

with example_config() as config, Router.from_config(config) as client:
    try:
        reply = client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "Hello!"}], max_tokens=16
        )
    except openai.RateLimitError as error:  # existing except clauses keep working
        print("every backend is rate-limited:", error, error.attempts)  # type: ignore[attr-defined]
    else:
        print(reply.choices[0].message.content)
        print(route_of(reply).summary())
