"""`python -m router.cli …`: the same as the `inference-router` console script."""

from router.cli import run

run()
