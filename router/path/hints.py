"""Per-call routing hints: `create(..., route={...})` or a typed `RouteHints`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from policies import known_policies


class RouteHints(BaseModel):
    """What one call asks of the router; every field is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: str | None = None
    """Rank this call's candidates with this policy instead of the configured one."""
    deadline_s: float | None = Field(None, gt=0)
    """Give up on the whole call (all retries and fallbacks) after this many seconds."""
    max_cost_usd: float | None = Field(None, ge=0)
    """Only candidates whose expected cost for this request is at most this."""
    max_ttft_s: float | None = Field(None, gt=0)
    """Only candidates whose expected time to first token is at most this."""
    max_input_per_mtok: float | None = Field(None, ge=0)
    """Only candidates whose input price (USD per million tokens) is at most this."""
    max_output_per_mtok: float | None = Field(None, ge=0)
    """Only candidates whose output price (USD per million tokens) is at most this."""
    exclude: tuple[str, ...] = ()
    """Backend names, provider kinds or `backend/model` ids never to use for this call."""
    only: tuple[str, ...] = ()
    """If given, use only these backend names, provider kinds or `backend/model` ids."""
    prefer: tuple[str, ...] = ()
    """Backend names, provider kinds or `backend/model` ids to try first, in this order."""
    require: tuple[Literal["tools", "json_schema", "stream"], ...] = ()
    """Capabilities a deployment must have beyond what the request itself uses."""
    cache: Literal["default", "no-store", "refresh", "only-if-cached"] = "default"
    """`no-store`: neither read nor write the cache; `refresh`: skip the lookup, store the answer;
    `only-if-cached`: answer from the cache or fail with `CacheMissError`."""
    cache_ttl_s: float | None = Field(None, gt=0)
    """Keep this call's answer for this long instead of the configured TTL."""
    tags: tuple[str, ...] = ()

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str | None) -> str | None:
        if value is not None and value not in known_policies():
            raise ValueError(f"unknown policy {value!r}; known: {', '.join(known_policies())}")
        return value

    @classmethod
    def coerce(cls, value: RouteHints | dict[str, Any] | None) -> RouteHints:
        """Accept the typed form, a plain dict, or nothing; an unknown key is named in the error."""
        if value is None:
            return _EMPTY
        if isinstance(value, RouteHints):
            return value
        unknown = sorted(set(value) - set(cls.model_fields))
        if unknown:
            raise ValueError(
                f"unknown routing hint{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(cls.model_fields)}"
            )
        return cls.model_validate(value)


_EMPTY = RouteHints()
