"""Activates the TAS socket shim in every Python process under `tas run`.

Set up by `tas run` (PYTHONPATH + TAS_SHIM_STATE_DIR); does nothing without
TAS_SHIM_STATE_DIR.  Chains to the next sitecustomize on sys.path.
"""

import os
import sys


def _activate():
    if not os.environ.get("TAS_SHIM_STATE_DIR"):
        return
    lib = os.environ.get("TAS_SHIM_LIBPATH")
    if lib and lib not in sys.path:
        sys.path.append(lib)
    try:
        import libtas.shim

        libtas.shim.install()
    except Exception as e:  # never fall through silently to kernel TCP
        sys.stderr.write(f"tas run: cannot activate the TAS socket shim in {sys.executable}: {e!r}\n")
        sys.stderr.flush()
        os._exit(70)


def _chain():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(
            "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != here]
        )
        if spec is not None and spec.loader is not None and spec.origin != __file__:
            code = spec.loader.get_code("sitecustomize")
            exec(code, {"__name__": "sitecustomize", "__file__": spec.origin})
    except Exception:
        pass


_activate()
_chain()
