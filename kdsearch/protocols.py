"""Moved: evaluation-server protocols are `kdsearch.deploy.protocols`. This alias keeps a user's protocol that
imports `kdsearch.protocols` (docs/submit.md) working for one release, with a DeprecationWarning."""

from .core.moved import alias

alias(__name__, "kdsearch.deploy.protocols")
