"""Drop-in socket shim: unchanged Python programs use the TAS stack for TCP/IPv4.

``tas run -- CMD ...`` puts ``libtas/shim/site`` on PYTHONPATH and sets
``TAS_SHIM_STATE_DIR``; its ``sitecustomize`` calls :func:`install` in every
Python process started under it.  See docs/SHIM.md.
"""

from __future__ import annotations

import os

__all__ = ["install", "installed", "SITE_DIR"]

SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "site")
_done = False


def install() -> None:
    """Patch socket (and ssl, asyncio/uvloop server and connection helpers)
    so that TCP/IPv4 goes through the stack.  Idempotent."""
    global _done
    if _done:
        return
    from . import aio, sock

    sock.install()
    aio.install()
    _done = True


def installed() -> bool:
    return _done
