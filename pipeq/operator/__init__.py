"""The WorkerPool operator (kopf): ``pipeq operator`` or ``kopf run -m pipeq.operator``.

Importing this package registers the handlers (``handlers.py``) with kopf's default
registry. ``builders.py`` holds the pure manifest builders, ``main.run`` the command line.
The scaling policy itself is ``pipeq.scaling`` (shared with ``pipeq dev``).

(Named ``pipeq.operator``, never a top-level ``operator``: that would shadow the standard
library's module.)
"""

from pipeq.operator import handlers  # noqa: F401  (registers the handlers)
