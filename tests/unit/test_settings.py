"""Settings come from PIPEQ_* variables, and the README's table is the model's."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeq.settings import Settings, markdown_table

ROOT = Path(__file__).resolve().parents[2]


def test_env_variables_are_read(monkeypatch):
    monkeypatch.setenv("PIPEQ_QUEUE", "other")
    monkeypatch.setenv("PIPEQ_PIPELINE_TIMEOUT", "30")
    s = Settings()
    assert s.queue == "other" and s.pipeline_timeout == 30


def test_invalid_values_are_refused(monkeypatch):
    with pytest.raises(ValidationError):
        Settings(pipeline_timeout=0)
    with pytest.raises(ValidationError, match="MIN_WORKERS"):
        Settings(min_workers=5, max_workers=2)


def test_readme_lists_every_setting():
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "README's settings table is stale: paste `python -m pipeq.settings`"
