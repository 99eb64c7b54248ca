"""The HTTP door: `inference-router serve`, the same router behind OpenAI's wire for every language.

`app` is a plain ASGI app over the router's engine and the transport's `serve_wire` (one engine per
worker process, shared by all its requests); `keys` checks callers' keys, limits and budgets, kept by
`meter` in memory or in Redis; `server` runs it on uvicorn. Nothing in the router imports this
package: it is loaded only by the `serve` command.
"""
