"""pipeq with object storage on a kind cluster (issue 16): an S3-compatible server in the
cluster and a second release of the chart with ``storage.type=s3``, whose pool spreads its
workers over the worker nodes.

The server is versitygw (the one tests/support/s3server.py runs on the host) as a Deployment
with ``emptyDir`` volumes, in an image holding only its static binary (``docker import``:
nothing to pull). The release gets the keys from a Secret (``storage.s3.existingSecret``), as
a user's install would.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile

from tests.support.kind import VALUES, KindCluster, run
from tests.support.s3server import ACCESS_KEY, REGION, SECRET_KEY, versitygw_bin
from tests.support.waiting import wait_for

#: where the S3 server runs (its own namespace: it is the user's store, not part of pipeq)
S3_NAMESPACE = "s3"
S3_PORT = 7070
S3_ENDPOINT = f"http://s3.{S3_NAMESPACE}.svc:{S3_PORT}"
BUCKET = "pipeq"
#: the release with object storage, beside the suite's release with a data volume
RELEASE = "pipeq-s3"
NAMESPACE = "pipeq-s3"
KEYS_SECRET = "s3-keys"
POOL = "default"
#: the chart's values on top of the suite's: object storage, two workers always up, one per node
VALUES_S3 = {
    **VALUES,
    "storage.type": "s3",
    "storage.s3.bucket": BUCKET,
    "storage.s3.endpoint": S3_ENDPOINT,
    "storage.s3.region": REGION,
    "storage.s3.existingSecret": KEYS_SECRET,
    "storage.scratch.sizeLimit": "1Gi",
    "workerPool.minReplicas": 2,
    "workerPool.maxReplicas": 2,
    # DoNotSchedule: a second worker on a node that has one stays Pending, which the test sees
    "workerPool.topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
        "nodeTaintsPolicy": "Honor", "labelSelector": {"matchLabels": {"pipeq.dev/pool": POOL}},
    }],
}


def versitygw_image() -> str:
    """``pipeq-versitygw:<hash of the binary>``, made by ``docker import`` when missing."""
    binary = versitygw_bin()
    tag = f"pipeq-versitygw:{hashlib.sha256(binary.read_bytes()).hexdigest()[:12]}"
    if run("docker", "image", "inspect", tag, check=False).returncode != 0:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(str(binary), arcname="versitygw")
        r = subprocess.run(["docker", "import", "--change", 'ENTRYPOINT ["/versitygw"]', "-", tag],
                           input=buf.getvalue(), capture_output=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"docker import {tag}: {r.stderr.decode()[-2000:]}")
    return tag


def server_manifest(image: str) -> str:
    return f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {S3_NAMESPACE}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: s3, namespace: {S3_NAMESPACE}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: s3}}}}
  template:
    metadata: {{labels: {{app: s3}}}}
    spec:
      securityContext: {{runAsNonRoot: true, runAsUser: 10001, fsGroup: 10001, seccompProfile: {{type: RuntimeDefault}}}}
      containers:
      - name: versitygw
        image: {image}
        imagePullPolicy: Never
        args: [--port, ":{S3_PORT}", --access, {ACCESS_KEY}, --secret, {SECRET_KEY}, --region, {REGION}, --quiet,
               posix, --sidecar, /meta, /buckets]
        ports: [{{containerPort: {S3_PORT}}}]
        readinessProbe: {{tcpSocket: {{port: {S3_PORT}}}, periodSeconds: 1}}
        securityContext: {{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{drop: [ALL]}}}}
        volumeMounts: [{{name: buckets, mountPath: /buckets}}, {{name: meta, mountPath: /meta}}]
      volumes: [{{name: buckets, emptyDir: {{}}}}, {{name: meta, emptyDir: {{}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: s3, namespace: {S3_NAMESPACE}}}
spec:
  selector: {{app: s3}}
  ports: [{{port: {S3_PORT}, targetPort: {S3_PORT}}}]
"""


def s3_client(cluster: KindCluster):
    """A boto3 client of the in-cluster server, through a port-forward."""
    from pipeq.storage.s3 import client as s3

    url = cluster.forward("svc/s3", S3_PORT, namespace=S3_NAMESPACE)
    return s3.client(endpoint_url=url, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                     region_name=REGION)


def up(cluster: KindCluster, redis_image: str) -> None:
    """The server, its bucket, the keys' Secret and the release with ``storage.type=s3``
    (``helm install --wait``: both workers running)."""
    image = versitygw_image()
    cluster.load(image)
    cluster.kubectl("apply", "-f", "-", input=server_manifest(image))
    cluster.wait_rollout("deployment/s3", namespace=S3_NAMESPACE)
    s3_client(cluster).create_bucket(Bucket=BUCKET)
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    cluster.kubectl("create", "secret", "generic", KEYS_SECRET, "-n", NAMESPACE,
                    f"--from-literal=AWS_ACCESS_KEY_ID={ACCESS_KEY}", f"--from-literal=AWS_SECRET_ACCESS_KEY={SECRET_KEY}")
    cluster.install({**VALUES_S3, "redis.image": redis_image}, namespace=NAMESPACE, release=RELEASE)
    # the operator makes the pool's Deployment after the install: wait for both workers
    wait_for(lambda: cluster.kubectl("get", "deployment", f"{POOL}-workers", "-n", NAMESPACE, check=False).strip(),
             timeout=60, what="the s3 release's worker Deployment")
    cluster.wait_rollout(f"deployment/{POOL}-workers", namespace=NAMESPACE, timeout=240)

