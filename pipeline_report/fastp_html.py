"""fastp.html without the internet: fastp's report loads plotly from two web addresses
(opengene.org, then cdn.plot.ly through a document.write fallback), so offline its charts
stay blank. :func:`make_offline` points it at a copy of plotly next to it instead."""

from __future__ import annotations

import os
import re

#: <script src="http(s)://...plotly...js"></script>
REMOTE_PLOTLY = re.compile(r"""<script\s+src=(['"])https?://[^'"]*plotly[^'"]*\.js\1\s*>\s*</script>""", re.I)
#: <script ...> window.Plotly || document.write('<script src="https://...">...') </script>
FALLBACK = re.compile(r"""<script[^>]*>\s*window\.Plotly\s*\|\|\s*document\.write\([^<]*<script[^>]*https?://.*?</script>""",
                      re.I | re.S)
ANY_REMOTE_SCRIPT = re.compile(r"""<script[^>]+src=(['"])(?:https?:)?//""", re.I)


def make_offline(path: str, script: str = "plotly.min.js") -> bool:
    """Rewrite fastp.html at ``path`` to load ``script`` (a path relative to it). True when the
    result loads no script from elsewhere; the file is left as it was otherwise."""
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        text = fh.read()
    new, n = REMOTE_PLOTLY.subn(f'<script src="{script}"></script>', text, count=1)
    if not n:
        return False
    new = FALLBACK.sub("", new)
    if ANY_REMOTE_SCRIPT.search(new):
        return False
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as fh:
        fh.write(new)
    os.replace(tmp, path)
    return True
