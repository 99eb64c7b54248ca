"""Loaded by every Python child process a test starts (the suite puts this folder on PYTHONPATH).

When `ROUTER_TEST_CHILD_LOGS` names a folder, the child writes there, as `PID.log`, every log
line of the router's loggers (DEBUG and up, formatted as the suite's own capture does) and a copy
of everything it writes to stderr; and at exit, as `PID.keys`, the API keys it was configured
with. The suite's session-wide key grep (`tests/conftest.py`) reads both, so a key a child
process logs fails the run as one logged in-process would. Nothing heavy is imported here:
`inference-router --help` must still start without openai, pydantic or httpx2.
"""

from __future__ import annotations

import os

_FOLDER = os.environ.get("ROUTER_TEST_CHILD_LOGS")


def _install(folder: str) -> None:
    import atexit
    import contextlib
    import logging
    import sys

    pid = os.getpid()
    log = open(os.path.join(folder, f"{pid}.log"), "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    handler = logging.StreamHandler(log)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    for name in ("router", "providers", "policies", "httpx2", "httpcore2"):
        logging.getLogger(name).setLevel(logging.DEBUG)

    class _Tee:
        """sys.stderr, with a copy of each write in the child's log file."""

        def __init__(self, stream: object) -> None:
            self._stream = stream

        def write(self, text: str) -> int:
            with contextlib.suppress(ValueError, OSError):
                log.write(text)
            return self._stream.write(text)  # type: ignore[attr-defined,no-any-return]

        def __getattr__(self, name: str) -> object:
            return getattr(self._stream, name)

    if sys.stderr is not None:
        sys.stderr = _Tee(sys.stderr)  # type: ignore[assignment]

    def _keys() -> None:
        logs = sys.modules.get("router.observe.logs")
        secrets = sorted(getattr(logs, "_secrets", ()) or ())
        if secrets:
            with open(os.path.join(folder, f"{pid}.keys"), "w", encoding="utf-8") as out:
                out.write("\n".join(secrets) + "\n")

    atexit.register(_keys)


if _FOLDER and os.path.isdir(_FOLDER):
    _install(_FOLDER)
