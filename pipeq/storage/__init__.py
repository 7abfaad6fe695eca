"""Where a job's files live: one interface, two backends, chosen by ``PIPEQ_STORAGE``.

- ``file`` (:mod:`pipeq.storage.files`): the data folder shared by the API and the workers;
  a worker runs the pipeline in the job's folder itself.
- ``s3://BUCKET[/PREFIX]`` (:mod:`pipeq.storage.s3.store`): an S3-compatible object store; a
  worker copies the inputs to local scratch and publishes the results back.

The interface and its errors are in :mod:`pipeq.storage.base`, the name checks in
:mod:`pipeq.storage.names`. Each module imports only those below it, never this package's
``__init__``: there is no import circle.
"""

from __future__ import annotations

from pipeq.settings import Settings
from pipeq.storage.base import Attempt, NotFound, Sink, Staging, StorageError, Store, Unavailable, summary_of

__all__ = ["Attempt", "NotFound", "Sink", "Staging", "StorageError", "Store", "Unavailable", "open_store", "summary_of"]


def open_store(settings: Settings) -> Store:
    """The store ``settings.storage`` names."""
    if settings.storage == "file":
        from pipeq.storage.files import FileStore

        return FileStore(settings.data_dir)
    from pipeq.storage.s3.store import S3Store  # boto3 is imported only when it is used

    return S3Store.from_url(settings.storage)
