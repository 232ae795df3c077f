"""Download a URL with urllib.request; print RESULT with size and sha256."""

import hashlib
import json
import sys
import urllib.request

with urllib.request.urlopen(sys.argv[1], timeout=30) as r:
    h = hashlib.sha256()
    n = 0
    while True:
        b = r.read(1 << 16)
        if not b:
            break
        h.update(b)
        n += len(b)
print(
    "RESULT " + json.dumps({"ok": True, "bytes": n, "sha256": h.hexdigest(), "status": r.status}), flush=True
)
