"""The object-storage backend: its client (``client``), its streaming sink (``sink``) and
its store (``store``)."""
