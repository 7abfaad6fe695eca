"""The cluster tests' fixtures (``cluster``, ``namespace``) live in
``tests/support/cluster_fixtures.py``, loaded once for the whole session by the top-level
conftest, so every test directory shares one control plane."""
