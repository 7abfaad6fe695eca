"""The pure parts of quotas and the fair share: whose limits, whose weight, what scaling counts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeq import fairshare, queue, scaling
from pipeq.quotas import Limits, Owner, QuotaExceeded, limits_for
from pipeq.settings import Settings


def test_owner_comes_from_the_meta_and_defaults_to_anonymous():
    assert Owner.of({}) == Owner("anonymous")
    assert Owner.of({"owner": "oidc:x|1", "owner_groups": ["a", "b"], "owner_admin": True}) == Owner("oidc:x|1", ("a", "b"), True)


def test_limits_default_group_override_most_generous_and_admin():
    s = Settings(quota_active_jobs=5, quota_submissions_per_minute=10,
                 quota_groups={"big": {"active_jobs": 50}, "bigger": {"active_jobs": 80}, "free": {"submissions_per_minute": None}})
    assert limits_for((), False, s) == Limits(5, 10)
    assert limits_for(("big",), False, s) == Limits(50, 10)  # a limit left out stays the default
    assert limits_for(("big", "bigger"), False, s) == Limits(80, 10)
    assert limits_for(("free",), False, s) == Limits(5, None)  # null: no limit
    assert limits_for(("big",), True, s) == Limits() and not Limits()
    assert not limits_for((), False, Settings())  # unset: no limit


def test_quota_groups_and_weights_are_validated():
    with pytest.raises(ValidationError):
        Settings(quota_groups={"g": {"active_job": 1}})  # a misspelt limit is refused, not ignored
    with pytest.raises(ValidationError):
        Settings(fair_share_weights={"g": 0})


def test_settings_read_json_from_the_environment(monkeypatch):
    monkeypatch.setenv("PIPEQ_QUOTA_GROUPS", '{"lab": {"active_jobs": 3}}')
    monkeypatch.setenv("PIPEQ_FAIR_SHARE_WEIGHTS", '{"lab": 2}')
    s = Settings()
    assert limits_for(("lab",), False, s).active_jobs == 3 and fairshare.weight_for(("lab",), s) == 2


def test_weight_is_the_largest_of_the_groups_else_one():
    s = Settings(fair_share_weights={"a": 2, "b": 3.5})
    assert fairshare.weight_for((), s) == 1 and fairshare.weight_for(("a",), s) == 2
    assert fairshare.weight_for(("a", "b", "c"), s) == 3.5


def test_quota_exceeded_carries_its_codes():
    e = QuotaExceeded("active_jobs", 5, 5, 0.2)
    assert (e.limit, e.allowed, e.current, e.retry_after, e.code) == ("active_jobs", 5, 5, 1, "quota_exceeded")
    assert "5 active jobs, 5 allowed" in str(e)


def test_scaling_counts_backlogged_jobs_as_queued():
    assert queue.waiting(1, 9) == 10 and queue.waiting(0, 0) == 0
    d = scaling.decide(queued=queue.waiting(1, 9), running=0, busy=0, current=0, min_replicas=0, max_replicas=20, now=0)
    assert d.desired == 10 and d.reason.startswith("10 queued")
