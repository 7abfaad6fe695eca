"""One settings model for every component, read from ``PIPEQ_*`` environment variables.

Each field below is a row of the README's settings table; keep the two in step.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeq import scaling
from pipeq.queue import DEFAULT_QUEUE

ROOT = Path(__file__).resolve().parent.parent
#: a pipeline's time limit, for ``pipeq dev`` and for a WorkerPool that sets none
DEFAULT_PIPELINE_TIMEOUT = 6 * 3600


def _default_pipeline() -> Path:
    """pipeline.sh beside the package (a checkout) or in the worker image."""
    for candidate in (ROOT / "pipeline.sh", Path("/opt/pipeq/pipeline.sh")):
        if candidate.exists():
            return candidate
    return ROOT / "pipeline.sh"


class QuotaOverride(BaseModel):
    """A group's quotas (PIPEQ_QUOTA_GROUPS): a limit left out is the default's; null is none."""

    model_config = ConfigDict(extra="forbid")
    active_jobs: int | None = Field(None, ge=0)
    submissions_per_minute: int | None = Field(None, ge=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIPEQ_", extra="ignore")

    # Where things are
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis holding the queue, jobs and registries.")
    queue: str = Field(DEFAULT_QUEUE, description="RQ queue the API enqueues to and workers listen on.")
    data_dir: Path = Field(Path("./data"), description="Root of the job folders, shared by the API and workers (with `PIPEQ_STORAGE=file`).")
    storage: str = Field("file", pattern=r"^(file|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?)$", description="Where job files live: `file` (the data folder) or `s3://BUCKET[/PREFIX]` (endpoint and credentials from the standard AWS variables: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, profiles).")
    pipeline: Path = Field(default_factory=_default_pipeline, description="The pipeline script workers run.")

    # The API
    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8000, description="Port the API listens on.")
    api_workers: int = Field(1, ge=1, description="API processes sharing the port (`pipeq api`). The upload checks are CPU work in Python, so one process serves about one core of them: on a machine of its own give it one per core; in Kubernetes keep 1 and raise the chart's `api.replicas`.")
    api_token: str | None = Field(None, description="The admin token: a request with 'Authorization: Bearer <token>' is the principal `admin`, who sees and may stop every job (for scripts). When set, or with `PIPEQ_OIDC_ISSUER`, every route but /healthz, /readyz and the page's shell needs a bearer token; with neither, pipeq has one user, `anonymous`, who may do everything (`make run` on a laptop).")
    oidc_issuer: str | None = Field(None, description="OIDC sign-in: the issuer URL, exactly as tokens name it in `iss` (its `/.well-known/openid-configuration` names the keys); bearer JWTs it signs are accepted. Unset: no OIDC.")
    oidc_audience: str | None = Field(None, description="OIDC: the audience (`aud`) a token must name to be accepted; needed with `PIPEQ_OIDC_ISSUER`.")
    oidc_groups_claim: str = Field("groups", min_length=1, description="OIDC: the token claim holding the user's groups (a list of names).")
    admin_groups: str = Field("", description="OIDC: comma-separated groups whose members are admins (see and stop every job, read /metrics, no quota).")
    user_groups: str = Field("", description="OIDC: comma-separated groups whose members may use pipeq (admins always may); a valid token of anyone else gets 403. Empty: every user of the issuer.")
    oidc_web_client_id: str | None = Field(None, description="OIDC: the client id the web page signs in with (a public client, authorization code with PKCE).")
    max_upload_bytes: int = Field(2 * 1024**3, description="Largest accepted size of one uploaded file (413 above).")
    max_total_upload_bytes: int = Field(4 * 1024**3, description="Largest accepted size of all files of one submission (413 above).")
    reference_hosts: str = Field("", description="Comma-separated `scheme://host[:port]` entries (`*.` for subdomains) that inputs given by URL may come from, e.g. `https://*.ebi.ac.uk,s3://lab-data`; nothing else is fetched (but presigned uploads, in the job store's bucket). A host allowed by a `*.` entry is read from public addresses only; name an internal server exactly.")
    presigned_upload_bytes: int = Field(64 * 1024**2, ge=0, description="With object storage: the web page uploads files larger than this straight to the store (POST /uploads, presigned URLs) instead of through the API.")
    s3_public_endpoint: str | None = Field(None, description="With object storage: the endpoint that presigned upload URLs name, when uploaders reach the store at another address than pipeq does (AWS_ENDPOINT_URL).")
    job_ttl: int = Field(7 * 24 * 3600, description="Seconds a finished, failed or canceled job is kept in Redis and listed.")

    # Quotas and fair share (pipeq.quotas, pipeq.fairshare)
    quota_active_jobs: int | None = Field(None, ge=0, description="Most active jobs (queued or running) one user may have; over it a submission gets 429. Unset: no limit. Admins are not capped.")
    quota_submissions_per_minute: int | None = Field(None, ge=0, description="Most submissions one user may make in any 60 s; over it 429. Unset: no limit.")
    quota_groups: dict[str, QuotaOverride] = Field(default_factory=dict, description='Quotas by group, JSON: `{"lab-a": {"active_jobs": 50, "submissions_per_minute": null}}` (null: no limit; a limit left out is the default). A user in several groups gets the most generous.')
    fair_share: bool = Field(True, description="Workers take the next job from the backlogged user with the fewest running jobs per weight (docs/fair-share.md); false: one FIFO queue for everyone.")
    fair_share_weights: dict[str, float] = Field(default_factory=dict, description='Fair-share weights by group, JSON: `{"lab-a": 2}` (a user in several groups gets the largest; others 1).')

    # Workers
    pipeline_timeout: int = Field(DEFAULT_PIPELINE_TIMEOUT, gt=0, description="Seconds a pipeline may run before its process group is killed.")
    kill_grace: float = Field(10.0, ge=0, description="Seconds between SIGTERM and SIGKILL when a pipeline is stopped or times out.")
    threads: int = Field(2, ge=1, description="--threads passed to pipeline.sh.")
    retries: int = Field(2, ge=0, description="Extra attempts for a job whose worker died (a pipeline that fails by itself is not retried).")
    lease_seconds: int = Field(15, ge=3, description="A running job's lease; a job whose worker stops renewing it is requeued after this.")
    worker_name: str | None = Field(None, description="RQ worker name; defaults to the pod name (HOSTNAME) on Kubernetes.")
    scratch_dir: Path = Field(Path("/tmp/pipeq-scratch"), description="With object storage: local folder where a worker copies a job's inputs and runs it (freed after every attempt).")
    log_upload_interval: float = Field(5.0, gt=0, description="With object storage: seconds between uploads of a running job's log.")
    storage_retry_seconds: float = Field(120.0, ge=0, description="Seconds a worker retries a step that meets the job store unreachable (with a backoff) before the attempt ends and the job is retried, spending one of its PIPEQ_RETRIES; a store that refuses a request fails the job at once.")
    maintenance_interval: int = Field(5, ge=1, description="Seconds between a worker's registry clean-ups (which requeue abandoned jobs).")

    # pipeq dev: local autoscaled workers
    min_workers: int = Field(1, ge=0, description="pipeq dev: fewest local workers (0 = scale to zero).")
    max_workers: int = Field(scaling.MAX_WORKERS, ge=1, description="pipeq dev: most local workers.")
    jobs_per_worker: int = Field(scaling.JOBS_PER_WORKER, ge=1, description="Jobs one worker takes at a time (scaling divides the load by it).")
    scale_down_delay: float = Field(scaling.SCALE_DOWN_DELAY, ge=0, description="Seconds a lower worker count must hold before workers are removed.")
    poll_interval: float = Field(scaling.POLL_INTERVAL, gt=0, description="pipeq dev: seconds between scaling decisions when no enqueue wakes the supervisor sooner (every enqueue through pipeq does).")

    # The operator (`pipeq operator`; its command line overrides these)
    operator_namespaces: str = Field("", description="pipeq operator: comma-separated namespaces to watch (glob patterns allowed); empty: every namespace.")
    operator_metrics_port: int = Field(0, ge=0, description="pipeq operator: port of its Prometheus /metrics (0 = none).")
    operator_pool_selector: str = Field("", description="pipeq operator: a label selector (e.g. `pipeq.dev/release=pipeq`); only the WorkerPools it selects are served, so two releases' operators in one cluster never both scale a pool. Empty: every pool.")
    operator_max_pools: int = Field(256, ge=1, description="pipeq operator: most WorkerPools one operator serves at once (sizes kopf's thread pool: each pool's scaler holds a thread).")

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if self.min_workers > self.max_workers:
            raise ValueError("PIPEQ_MIN_WORKERS must not exceed PIPEQ_MAX_WORKERS")
        if any(not w > 0 for w in self.fair_share_weights.values()):
            raise ValueError("PIPEQ_FAIR_SHARE_WEIGHTS: every weight must be more than 0")
        if self.oidc_issuer and not self.oidc_audience:
            raise ValueError("PIPEQ_OIDC_ISSUER needs PIPEQ_OIDC_AUDIENCE (the audience its tokens must name)")
        if self.oidc_issuer and not self.oidc_issuer.startswith(("https://", "http://")):
            raise ValueError("PIPEQ_OIDC_ISSUER must be an https:// (or http://) URL")
        return self


    @property
    def admin_group_list(self) -> frozenset[str]:
        return frozenset(g.strip() for g in self.admin_groups.split(",") if g.strip())

    @property
    def user_group_list(self) -> frozenset[str]:
        return frozenset(g.strip() for g in self.user_groups.split(",") if g.strip())

    @property
    def operator_namespace_list(self) -> list[str]:
        return [n.strip() for n in self.operator_namespaces.split(",") if n.strip()]


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()


def markdown_table() -> str:
    """The README's settings table, made from the model (a test keeps the README in step)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, f in Settings.model_fields.items():
        default = f.default if f.default_factory is None else ("pipeline.sh beside the package" if name == "pipeline" else f.default_factory())
        if isinstance(default, Path):
            default = str(default)
        shown = "—" if default is None else f"`{default}`"
        rows.append(f"| `PIPEQ_{name.upper()}` | {shown} | {f.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
