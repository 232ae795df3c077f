"""cffi builder for the stack's C kernels (run by `pip install`, see setup.py).

One extension, ``flextcp._native``, holds every C kernel so the fast path can
call the NIC kernels without crossing back into Python.  The cdef is read
from the public headers (``*/csrc/include/*.h``); those headers are kept
"cdef-clean" and this builder strips the preprocessor lines cffi cannot
parse (include guards, #include) while keeping integer #defines.
"""

from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent
PACKAGES = ("flextcp", "nicemu")
# tas_abi.h first: the other headers use its types.
FIRST = "tas_abi.h"
_INT_DEFINE = re.compile(r"^#define\s+\w+\s+(-?\d+|0x[0-9a-fA-F]+)\s*(/\*.*\*/)?\s*$")


def public_headers() -> list[Path]:
    found = [h for pkg in PACKAGES for h in sorted((ROOT / pkg / "csrc" / "include").glob("*.h"))]
    return sorted(found, key=lambda h: (h.name != FIRST, h.parent.parent.parent.name, h.name))


def cdef_text(header: Path) -> str:
    lines = []
    for line in header.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and not _INT_DEFINE.match(stripped):
            continue
        lines.append(line)
    return "\n".join(lines)


def sources() -> list[str]:
    return [str(c.relative_to(ROOT)) for pkg in PACKAGES for c in sorted((ROOT / pkg / "csrc").glob("*.c"))]


ffibuilder = FFI()
ffibuilder.cdef("\n".join(cdef_text(h) for h in public_headers()))
ffibuilder.set_source(
    "flextcp._native",
    "#include <stdint.h>\n#include <stddef.h>\n"
    + "\n".join(f'#include "{h.name}"' for h in public_headers()),
    sources=sources(),
    include_dirs=[str(ROOT / pkg / "csrc" / "include") for pkg in PACKAGES]
    + [str(ROOT / pkg / "csrc") for pkg in PACKAGES],
    extra_compile_args=["-O2", "-Wall", "-Werror", "-Wno-unused-function", "-std=gnu11"],
)

if __name__ == "__main__":
    # Development build: the .so lands next to the sources (flextcp/).
    ffibuilder.compile(tmpdir=str(ROOT), verbose=False)
