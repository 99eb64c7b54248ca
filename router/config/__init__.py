"""The configuration contract, compiled into a route table.

`schema` (what a config may say) ← `rules` (the `rules:` list, compiled) ← `routes` (aliases →
deployments, the table the request path reads) ← `checks` (what the schema alone can't judge)
← `load` (files, `${VAR}`, line numbers). Imports run that one way; `eligibility` (what a
deployment can serve) sits beside `schema` at the bottom.
"""

from router.config.load import load_config as load_config
from router.config.schema import *  # noqa: F403 - the schema's names are this package's public surface
