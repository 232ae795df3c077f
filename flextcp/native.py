"""Access to the compiled kernels (``flextcp._native``) and the twin switch.

``from flextcp.native import ffi, lib`` everywhere instead of importing the
extension directly.  ``use_pure()`` is true when ``TAS_PURE=1`` is set in the
environment; modules that offer a pure-Python twin select it then.
"""

from __future__ import annotations

import os

from flextcp._native import ffi, lib

__all__ = ["ffi", "lib", "use_pure"]


def use_pure() -> bool:
    """True if the environment asks for the pure-Python twins (TAS_PURE=1)."""
    return os.environ.get("TAS_PURE", "") == "1"
