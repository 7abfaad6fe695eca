"""The manifests the operator sends, built from a WorkerPool spec without a cluster."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeq.operator import builders

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_URL = "redis://operator-default:6379/0"


def deployment(spec, **kw):
    return builders.worker_deployment("pool-a", spec, replicas=kw.pop("replicas", 2), default_redis_url=DEFAULT_URL)


def env_of(dep):
    return {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_minimal_spec_gives_a_runnable_deployment():
    dep = deployment({"image": "ghcr.io/x/pipeq-worker:1"})
    assert dep["metadata"]["name"] == "pool-a-workers"
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["selector"]["matchLabels"] == {"pipeq.dev/pool": "pool-a", "app.kubernetes.io/component": "worker"}
    tpl = dep["spec"]["template"]
    assert tpl["metadata"]["labels"]["pipeq.dev/pool"] == "pool-a"
    assert dep["metadata"]["labels"]["pipeq.dev/pool"] == "pool-a"
    c = tpl["spec"]["containers"][0]
    assert "command" not in c and c["args"] == ["worker"], "the image's entrypoint (tini) must stay"
    assert c["image"] == "ghcr.io/x/pipeq-worker:1"
    assert c["imagePullPolicy"] == "IfNotPresent"
    env = env_of(dep)
    assert env["PIPEQ_QUEUE"]["value"] == "pipeline_tasks"
    assert env["PIPEQ_REDIS_URL"]["value"] == DEFAULT_URL
    assert env["PIPEQ_PIPELINE_TIMEOUT"]["value"] == "21600"
    assert env["PIPEQ_WORKER_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_timeout_reaches_the_worker_and_the_grace_period_outlasts_it():
    dep = deployment({"image": "w", "pipeline": {"timeoutSeconds": 600}})
    assert env_of(dep)["PIPEQ_PIPELINE_TIMEOUT"]["value"] == "600"
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 600 + 30


def test_restricted_pod_security():
    pod = deployment({"image": "w"})["spec"]["template"]["spec"]
    c = pod["containers"][0]["securityContext"]
    assert c["allowPrivilegeEscalation"] is False
    assert c["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert c["readOnlyRootFilesystem"] is True
    (tmp,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert {"name": tmp["name"], "emptyDir": {}} in pod["volumes"]


def test_pool_security_context_on_top_of_the_restricted_one():
    pod = deployment({"image": "w", "securityContext": {"runAsUser": 10001, "fsGroup": 10001}})["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
                                      "runAsUser": 10001, "fsGroup": 10001}


def test_redis_url_and_secret_ref():
    assert env_of(deployment({"image": "w", "redis": {"url": "redis://r:1/2"}}))["PIPEQ_REDIS_URL"]["value"] == "redis://r:1/2"
    e = env_of(deployment({"image": "w", "redis": {"secretRef": {"name": "s"}}}))["PIPEQ_REDIS_URL"]
    assert e == {"name": "PIPEQ_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "s", "key": "url"}}}
    assert builders.redis_url_for_operator({"redis": {"url": "redis://r:1/2"}}, DEFAULT_URL) == "redis://r:1/2"
    assert builders.redis_url_for_operator({}, DEFAULT_URL) == DEFAULT_URL
    # with a secretRef, the URL is the Secret's (the scaler reads it), never the operator's own
    assert builders.redis_url_for_operator({"redis": {"secretRef": {"name": "s"}}}, DEFAULT_URL) is None
    assert builders.redis_secret_ref({"redis": {"secretRef": {"name": "s"}}}) == ("s", "url")
    assert builders.redis_secret_ref({"redis": {"secretRef": {"name": "s", "key": "k"}}}) == ("s", "k")


def test_image_pull_secrets_and_priority_class_reach_the_pod_only_when_set():
    pod = deployment({"image": "reg.example.org/w", "imagePullSecrets": [{"name": "regcred"}],
                      "priorityClassName": "batch-low"})["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["priorityClassName"] == "batch-low"
    # a pool without them keeps the template it had, so an operator upgrade rolls no worker
    plain = deployment({"image": "w"})["spec"]["template"]["spec"]
    assert not {"imagePullSecrets", "priorityClassName"} & set(plain)
    crd = yaml.safe_load((ROOT / "helm/pipeq/crds/workerpools.yaml").read_text())
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert props["imagePullSecrets"]["items"]["required"] == ["name"] and props["priorityClassName"]["type"] == "string"


def test_pod_template_parts_pass_through_and_operator_env_wins():
    spec = {
        "image": "w", "imagePullPolicy": "Always", "queue": "q2",
        "resources": {"requests": {"cpu": "1"}, "limits": {"memory": "1Gi"}},
        "env": [{"name": "PIPEQ_DATA_DIR", "value": "/data"}, {"name": "PIPEQ_QUEUE", "value": "sneaky"}],
        "nodeSelector": {"disk": "ssd"},
        "tolerations": [{"key": "bio", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                       "whenUnsatisfiable": "DoNotSchedule"}],
        "serviceAccountName": "pipeq-worker",
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "pipeq-data"}}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    dep = deployment(spec)
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["imagePullPolicy"] == "Always"
    assert c["resources"] == spec["resources"]
    assert c["volumeMounts"][:-1] == spec["volumeMounts"]
    assert pod["volumes"][:-1] == spec["volumes"]
    assert pod["nodeSelector"] == {"disk": "ssd"}
    assert pod["tolerations"] == spec["tolerations"]
    assert pod["affinity"] == spec["affinity"]
    assert pod["topologySpreadConstraints"] == spec["topologySpreadConstraints"]
    assert pod["serviceAccountName"] == "pipeq-worker"
    names = [e["name"] for e in c["env"]]
    assert len(names) == len(set(names)), "duplicate env names break server-side apply"
    assert env_of(dep)["PIPEQ_QUEUE"]["value"] == "q2"
    assert env_of(dep)["PIPEQ_DATA_DIR"]["value"] == "/data"
    # the builder copies: mutating the manifest leaves the pool's spec alone
    c["resources"]["requests"]["cpu"] = "9"
    assert spec["resources"]["requests"]["cpu"] == "1"


def test_pool_settings_defaults_match_the_crd():
    crd = yaml.safe_load((ROOT / "helm/pipeq/crds/workerpools.yaml").read_text())
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    s = builders.pool_settings({"image": "w"})
    for key in ("queue", "imagePullPolicy", "minReplicas", "maxReplicas", "jobsPerWorker", "paused"):
        assert s[key] == props[key]["default"], key
    assert s["timeout"] == props["pipeline"]["properties"]["timeoutSeconds"]["default"]
    assert s["poll"] == props["scaling"]["properties"]["pollIntervalSeconds"]["default"]
    assert s["scaleDownDelay"] == props["scaling"]["properties"]["scaleDownDelaySeconds"]["default"]
    assert builders.pool_settings({"image": "w", "scaling": {"scaleDownDelaySeconds": 0}})["scaleDownDelay"] == 0


def test_crd_documents_every_field():
    crd = yaml.safe_load((ROOT / "helm/pipeq/crds/workerpools.yaml").read_text())
    version = crd["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == \
        ["Queue", "Queued", "Running", "Desired", "Ready", "Min", "Max", "Age"]
    missing = []

    def walk(node, path):
        for name, sub in (node.get("properties") or {}).items():
            if path + [name] not in (["apiVersion"], ["kind"], ["metadata"]) and not sub.get("description"):
                missing.append(".".join(path + [name]))
            walk(sub, path + [name])
        if "items" in node:
            walk(node["items"], path + ["[]"])

    walk(version["schema"]["openAPIV3Schema"], [])
    assert not missing, missing


def test_pod_annotations_patch_only_what_changed():
    busy = builders.pod_annotations({}, "abc")
    assert busy == {"pipeq.dev/job": "abc", "controller.kubernetes.io/pod-deletion-cost": str(builders.BUSY_COST),
                    "cluster-autoscaler.kubernetes.io/safe-to-evict": "false", "karpenter.sh/do-not-disrupt": "true"}
    assert builders.pod_annotations(busy, "abc") is None
    idle = builders.pod_annotations(busy, None)
    # a merge patch's null removes the key: an idle pod's node may be consolidated again
    assert idle == {"pipeq.dev/job": None, "controller.kubernetes.io/pod-deletion-cost": str(builders.IDLE_COST),
                    "cluster-autoscaler.kubernetes.io/safe-to-evict": None, "karpenter.sh/do-not-disrupt": None}
    assert builders.BUSY_COST > builders.IDLE_COST
    assert builders.pod_annotations({"controller.kubernetes.io/pod-deletion-cost": "0"}, None) is None
    # a new pod has no deletion cost, which the ReplicaSet counts as 0: idle already, no write
    assert builders.IDLE_COST == 0
    assert builders.pod_annotations({}, None) is None and builders.pod_annotations(None, None) is None


def test_conditions_keep_their_transition_time():
    first = builders.condition("RedisReachable", True, "Polled", "ok", "T1")
    same = builders.condition("RedisReachable", True, "Polled", "ok", "T2", [first])
    assert same["lastTransitionTime"] == "T1"
    flipped = builders.condition("RedisReachable", False, "Unreachable", "down", "T3", [same])
    assert flipped["lastTransitionTime"] == "T3" and flipped["status"] == "False"


def test_scale_message():
    assert builders.scale_message(1, 4, "7 queued, 1 running") == "scaled 1→4: 7 queued, 1 running"


def test_command_line_maps_to_kopf_run():
    from pipeq.operator.main import parse
    from pipeq.settings import Settings

    base = Settings(operator_metrics_port=0, operator_namespaces="")
    kwargs, verbose = parse([], base)
    settings = kwargs.pop("memo").settings
    assert kwargs == {"standalone": True, "clusterwide": True, "namespaces": [],
                      "liveness_endpoint": "http://0.0.0.0:8080/healthz"}
    assert settings.operator_metrics_port == 0 and not verbose
    kwargs, verbose = parse(["--namespace=a", "-n", "b", "--liveness=http://0.0.0.0:8081/healthz", "-v",
                             "--metrics-port", "9100", "--standalone"], base)
    assert kwargs["namespaces"] == ["a", "b"] and not kwargs["clusterwide"]
    assert kwargs["liveness_endpoint"] == "http://0.0.0.0:8081/healthz" and verbose
    assert kwargs["memo"].settings.operator_metrics_port == 9100
    assert kwargs["memo"].settings.operator_namespaces == "a,b"
    assert base.operator_metrics_port == 0  # the base is not changed
    assert parse(["--no-liveness"], base)[0]["liveness_endpoint"] is None
    assert parse(["--liveness="], base)[0]["liveness_endpoint"] is None
    # the settings' own namespaces when the command line names none
    assert parse([], Settings(operator_namespaces="x, y"))[0]["namespaces"] == ["x", "y"]


def test_exact_namespaces_turn_kopf_scanning_off():
    """A namespace-scoped operator may not list namespaces: kopf must not try (it retried
    for ~55 s on a real cluster before serving a pool); patterns and cluster-wide scan."""
    import kopf

    from pipeq.operator.main import parse
    from pipeq.operator.startup import configure
    from pipeq.settings import Settings

    for argv, disabled in ((["-n", "pipeq"], True), (["-n", "a", "-n", "b"], True), (["-n", "team-*"], False), ([], False)):
        config = parse(argv, Settings(operator_namespaces=""))[0]["memo"].settings
        settings = kopf.OperatorSettings()
        configure(settings, config)
        assert settings.scanning.disabled is disabled, argv


def test_a_pool_selector_limits_the_pools_watched():
    """Two releases in one cluster: each operator watches only the pools its selector picks
    (the API server filters the watch), so they never both scale one pool."""
    import kopf

    from pipeq.operator.kube import GROUP, PLURAL, VERSION
    from pipeq.operator.startup import configure
    from pipeq.settings import Settings

    resource = kopf.Resource(GROUP, VERSION, PLURAL)
    settings = kopf.OperatorSettings()
    configure(settings, Settings(operator_pool_selector="pipeq.dev/release=blue"))
    assert settings.watching.label_selectors.collect(resource) == ["pipeq.dev/release=blue"]
    settings = kopf.OperatorSettings()
    configure(settings, Settings(operator_pool_selector=""))
    assert settings.watching.label_selectors.collect(resource) == []


def test_finalizer_removal_tests_the_entry_it_removes():
    from pipeq.operator.builders import FINALIZER, finalizer_removal

    assert finalizer_removal(None) is None and finalizer_removal(["other"]) is None
    assert finalizer_removal(["other", FINALIZER]) == [
        {"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
        {"op": "remove", "path": "/metadata/finalizers/1"},
    ]
