"""Where stored Responses API answers live, so a call that continues one goes to that deployment.

A `responses.create` answer that the provider stores (`store` not false) can be continued with
`previous_response_id` or fetched again only from the backend that made it. The router notes
each id's deployment here, bounded, least recently used first out.
"""

from __future__ import annotations

from collections import OrderedDict

_KEEP = 100_000


class ResponseHomes:
    """A bounded map of Responses answer ids to the deployment (`backend/model`) that holds them."""

    def __init__(self, keep: int = _KEEP) -> None:
        self._homes: OrderedDict[str, str] = OrderedDict()
        self._keep = keep

    def remember(self, response_id: str, candidate_id: str) -> None:
        """Note that `response_id` is stored on this deployment."""
        self._homes[response_id] = candidate_id
        self._homes.move_to_end(response_id)
        while len(self._homes) > self._keep:
            self._homes.popitem(last=False)

    def get(self, response_id: str) -> str | None:
        """The deployment holding `response_id`, if this router made it."""
        home = self._homes.get(response_id)
        if home is not None:
            self._homes.move_to_end(response_id)
        return home
