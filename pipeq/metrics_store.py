"""Pipeline durations kept in Redis, so the API's /metrics can show what every worker saw.

A Prometheus histogram lives in one process; pipeq's workers are many short-lived processes,
so each one adds its observations to a Redis hash and the API exports that hash.
"""

from __future__ import annotations

import redis

from pipeq.keys import PIPELINE_SECONDS

BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600)


def record_duration(conn: redis.Redis, seconds: float, outcome: str) -> None:
    """Add one pipeline duration (outcome ``finished`` or ``failed``); best effort."""
    try:
        with conn.pipeline(transaction=False) as p:
            for le in BUCKETS:
                if seconds <= le:
                    p.hincrby(PIPELINE_SECONDS, f"{outcome}:le:{le}", 1)
            p.hincrby(PIPELINE_SECONDS, f"{outcome}:le:+Inf", 1)
            p.hincrbyfloat(PIPELINE_SECONDS, f"{outcome}:sum", seconds)
            p.execute()
    except redis.RedisError:
        pass


def read_durations(conn: redis.Redis) -> dict[str, dict[str, float]]:
    """``{outcome: {"le:<b>": count, ..., "sum": seconds}}`` as stored."""
    out: dict[str, dict[str, float]] = {}
    for k, v in conn.hgetall(PIPELINE_SECONDS).items():
        outcome, rest = k.decode().split(":", 1)
        out.setdefault(outcome, {})[rest] = float(v)
    return out
