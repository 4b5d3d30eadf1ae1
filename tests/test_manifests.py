"""
Tests for the Kubernetes manifests in etc/kubernetes/.

Built-in kinds are validated against the Kubernetes OpenAPI schemas of
``K8S_VERSION`` with kubernetes-validate (strict: unknown fields are errors).
It has no schemas for custom resources, so the PolicyBinding
(sts.min.io) and ServiceMonitor (monitoring.coreos.com) are checked
structurally instead.  Everything else checks what stsd relies on: the
ClusterRole is exactly stsd.ops.rbac.PERMISSIONS, the pods are hardened and
probed on the metrics port, the Service keeps the upstream operator's
name and port, the ConfigMap is a valid stsd config, and the
NetworkPolicy opens 4223 to everyone and 9090 to monitoring only.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from stsd.config import ConfigError, ServerConfig, parse_config
from stsd.ops import drain, rbac
from stsd.testing.pki import TestPKI
from tests._trial import cases, expand, temporary_directory

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "etc" / "kubernetes"
KUSTOMIZATION = KUBE / "kustomization.yaml"
EXAMPLES = KUBE / "examples"

#: Kubernetes version whose schemas the built-in kinds are validated against.
K8S_VERSION = "1.30.0"
NAMESPACE = "minio-operator"
APP_LABELS = {"app.kubernetes.io/name": "stsd"}
#: In the directory, deliberately not in kustomization.yaml's resources.
OPTIONAL = {"servicemonitor.yaml"}
#: API groups of custom resources: no schema in kubernetes-validate.
CRD_GROUPS = {"sts.min.io", "monitoring.coreos.com"}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "Namespace"}

STSD_COMMAND = ["twistd", "-n", "--pidfile=", "stsd", "--config", "/etc/stsd/stsd.yaml"]
STS_PORT = 4223
METRICS_PORT = 9090
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


# -- loading ---------------------------------------------------------------------------


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _yaml_files() -> list[Path]:
    return sorted(KUBE.rglob("*.yaml"))


def _manifest_files() -> list[Path]:
    return [p for p in _yaml_files() if p != KUSTOMIZATION]


def _kustomization() -> dict[str, Any]:
    (doc,) = _documents(KUSTOMIZATION)
    return doc


def _resources() -> list[dict[str, Any]]:
    """The objects `kubectl apply -k etc/kubernetes` creates (before kustomize edits)."""
    return [d for name in _kustomization()["resources"] for d in _documents(KUBE / name)]


def _one(
    kind: str, name: str | None = None, objects: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    found = [
        o
        for o in (_resources() if objects is None else objects)
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _example(name: str) -> list[dict[str, Any]]:
    return _documents(EXAMPLES / name)


def _deployment() -> dict[str, Any]:
    return _one("Deployment", "stsd")


def _pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = _deployment()["spec"]["template"]["spec"]
    return spec


def _container() -> dict[str, Any]:
    (container,) = [c for c in _pod_spec()["containers"] if c["name"] == "stsd"]
    return container


def _container_port(port: int | str) -> int:
    """A container port given by number or by name, as a number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in _container()["ports"] if p.get("name") == port]
    assert isinstance(number, int)
    return number


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"unexpected selector terms: {selector}"
    assert selector.get("matchLabels"), "an empty selector"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _config_text() -> str:
    text: str = _one("ConfigMap", "stsd-config")["data"]["stsd.yaml"]
    return text


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(KUBE)) for p in paths]


# -- every file parses; built-in kinds match the Kubernetes schemas -----------------------


# -- kustomization -----------------------------------------------------------------------


# -- RBAC: exactly stsd.ops.rbac.PERMISSIONS -------------------------------------------------


# -- Deployment --------------------------------------------------------------------------


# -- Services ----------------------------------------------------------------------------


# -- ConfigMap: a valid stsd config ------------------------------------------------------


def _config_with_test_tls(tmp_path: Path) -> dict[str, Any]:
    pki = TestPKI.create(tmp_path)
    config: dict[str, Any] = yaml.safe_load(_config_text())
    config["server"]["tls_cert"] = str(pki.cert_path)
    config["server"]["tls_key"] = str(pki.key_path)
    return config


# -- NetworkPolicy -----------------------------------------------------------------------


def _peers_allowed(policy: dict[str, Any], port: int) -> Iterator[dict[str, Any] | None]:
    """The `from` peers of every ingress rule admitting TCP `port` (None: any source)."""
    for rule in policy["spec"].get("ingress", []):
        ports = rule.get("ports")
        admits = ports is None or any(
            p.get("protocol", "TCP") == "TCP"
            and (p.get("port") is None or _container_port(p["port"]) == port)
            for p in ports
        )
        if admits:
            yield from rule.get("from") or [None]


# -- custom resources, checked structurally ----------------------------------------------


@expand
class ManifestTests(SynchronousTestCase):
    @cases("path", _yaml_files(), ids=_ids(_yaml_files()))
    def test_parses(self, path: Path) -> None:
        documents = _documents(path)
        assert documents, f"{path} holds no YAML document"
        for doc in documents:
            assert isinstance(doc, dict)
            assert doc.get("apiVersion") and doc.get("kind")
            if path != KUSTOMIZATION:
                assert DNS_LABEL.match(doc["metadata"]["name"]), doc["metadata"]["name"]

    @cases("path", _manifest_files(), ids=_ids(_manifest_files()))
    def test_schema(self, path: Path) -> None:
        """Strict validation: a misspelt or misplaced field fails, not just a wrong type."""
        kubernetes_validate = pytest.importorskip(
            "kubernetes_validate", reason="kubernetes-validate is not installed"
        )
        checked = 0
        for doc in _documents(path):
            if doc["apiVersion"].split("/")[0] in CRD_GROUPS:
                continue  # custom resource: see test_policybinding_example, test_servicemonitor
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                pytest.fail(
                    f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {where}: {e.message}"
                )
            checked += 1
        if not checked:
            raise SkipTest("custom resources only: checked structurally")

    def test_object_identities_unique(self) -> None:
        seen = [
            (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in _resources()
        ]
        assert len(seen) == len(set(seen))

    def test_objects_carry_namespace_and_labels(self) -> None:
        """Each file also works with plain `kubectl apply -f` (the README's migration uses it)."""
        for path in _manifest_files():
            if path.parent == EXAMPLES:
                continue
            for doc in _documents(path):
                metadata = doc["metadata"]
                assert metadata.get("labels", {}).items() >= APP_LABELS.items(), path.name
                if doc["kind"] in CLUSTER_SCOPED:
                    assert "namespace" not in metadata, path.name
                else:
                    assert metadata.get("namespace") == NAMESPACE, path.name

    def test_kustomization_lists_every_manifest(self) -> None:
        kustomization = _kustomization()
        assert kustomization["kind"] == "Kustomization"
        listed = kustomization["resources"]
        assert len(listed) == len(set(listed)), "a resource is listed twice"
        present = {p.name for p in KUBE.glob("*.yaml")} - {KUSTOMIZATION.name}
        assert set(listed) == present - OPTIONAL
        assert present >= OPTIONAL

    def test_kustomization_namespace_and_labels(self) -> None:
        kustomization = _kustomization()
        assert kustomization["namespace"] == NAMESPACE
        labels: dict[str, str] = dict(kustomization.get("commonLabels", {}))
        for entry in kustomization.get("labels", []):
            assert entry.get("includeSelectors", False), "labels must reach the selectors too"
            labels.update(entry["pairs"])
        assert labels.items() >= APP_LABELS.items()

    def test_kustomize_build(self) -> None:
        """`kubectl kustomize` builds the directory; every object lands where it should."""
        if shutil.which("kubectl") is None:
            raise SkipTest("kubectl (kustomize) is not installed")
        built = subprocess.run(
            ["kubectl", "kustomize", str(KUBE)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert built.returncode == 0, built.stderr
        objects = [d for d in yaml.safe_load_all(built.stdout) if d is not None]
        expected = {(o["kind"], o["metadata"]["name"]) for o in _resources()}
        assert {(o["kind"], o["metadata"]["name"]) for o in objects} == expected
        for o in objects:
            assert o["metadata"]["labels"].items() >= APP_LABELS.items()
            if o["kind"] in CLUSTER_SCOPED:
                assert "namespace" not in o["metadata"]
            else:
                assert o["metadata"]["namespace"] == NAMESPACE
        (binding,) = [o for o in objects if o["kind"] == "ClusterRoleBinding"]
        assert binding["subjects"][0]["namespace"] == NAMESPACE
        kubernetes_validate = pytest.importorskip(
            "kubernetes_validate", reason="kubernetes-validate is not installed"
        )
        for o in objects:
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)

    def test_clusterrole_is_exactly_permissions(self) -> None:
        role = _one("ClusterRole", "stsd")
        assert "aggregationRule" not in role
        granted: dict[tuple[str, str], list[str]] = {}
        non_resource = [r for r in role["rules"] if "nonResourceURLs" in r]
        assert non_resource == [{"nonResourceURLs": list(rbac.DISCOVERY_URLS), "verbs": ["get"]}]
        for rule in role["rules"]:
            if rule in non_resource:
                continue
            assert set(rule) == {"apiGroups", "resources", "verbs"}, (
                f"only apiGroups/resources/verbs (no resourceNames): {rule}"
            )
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    assert "*" not in (group, resource) and "*" not in rule["verbs"], rule
                    assert (group, resource) not in granted, f"{group}/{resource} granted twice"
                    granted[(group, resource)] = sorted(rule["verbs"])
        wanted = {(p.group, p.resource): sorted(p.verbs) for p in rbac.PERMISSIONS}
        assert granted == wanted

    def test_clusterrolebinding_binds_the_deployments_serviceaccount(self) -> None:
        binding = _one("ClusterRoleBinding", "stsd")
        role = _one("ClusterRole")
        account = _one("ServiceAccount")
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
        ]
        assert _pod_spec()["serviceAccountName"] == account["metadata"]["name"]
        assert account.get("automountServiceAccountToken", True) is True

    def test_deployment_basics(self) -> None:
        deployment = _deployment()
        spec = deployment["spec"]
        assert spec["replicas"] == 2
        template_labels = spec["template"]["metadata"]["labels"]
        assert _selects(spec["selector"], template_labels)
        assert template_labels.items() >= APP_LABELS.items()
        pod = _pod_spec()
        assert pod["automountServiceAccountToken"] is True
        assert isinstance(pod["terminationGracePeriodSeconds"], int)
        assert pod["terminationGracePeriodSeconds"] > 0
        container = _container()
        assert container["image"] == "stsd:0.1.0"
        # The command line: the image's ENTRYPOINT + CMD, or spelled out in the manifest.
        assert (
            container.get("command", STSD_COMMAND[:4]) + container.get("args", STSD_COMMAND[4:])
            == STSD_COMMAND
        )
        assert {
            (p["name"], p["containerPort"], p.get("protocol", "TCP")) for p in container["ports"]
        } == {
            ("https", STS_PORT, "TCP"),
            ("metrics", METRICS_PORT, "TCP"),
        }

    def test_deployment_spreads_over_nodes(self) -> None:
        pod = _pod_spec()
        labels = _deployment()["spec"]["template"]["metadata"]["labels"]
        keys = [
            c["topologyKey"]
            for c in pod.get("topologySpreadConstraints", [])
            if _selects(c["labelSelector"], labels)
        ]
        anti = pod.get("affinity", {}).get("podAntiAffinity", {})
        keys += [
            term["podAffinityTerm"]["topologyKey"]
            for term in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])
            if _selects(term["podAffinityTerm"]["labelSelector"], labels)
        ]
        assert "kubernetes.io/hostname" in keys

    def test_pod_security_context(self) -> None:
        assert _pod_spec()["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        }

    def test_container_security_context(self) -> None:
        context = _container()["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["privileged"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        for key in ("runAsUser", "runAsGroup"):  # if overridden, still the non-root ids
            assert context.get(key, 65532) == 65532
        assert context.get("runAsNonRoot", True) is True

    @cases(
        ("probe", "path"),
        [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")],
    )
    def test_probes_use_the_metrics_port(self, probe: str, path: str) -> None:
        container = _container()
        if probe == "startupProbe" and probe not in container:
            raise SkipTest("no startupProbe (optional)")
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert _container_port(get["port"]) == METRICS_PORT
        assert get.get("scheme", "HTTP") == "HTTP"

    def test_resources(self) -> None:
        resources = _container()["resources"]
        assert resources["requests"] == {"cpu": "100m", "memory": "128Mi"}
        assert resources["limits"]["memory"] == "256Mi"
        assert set(resources["limits"]) <= {"memory", "cpu"}

    def test_config_and_tls_are_one_projected_volume(self) -> None:
        """/etc/stsd/stsd.yaml, /etc/stsd/tls/tls.crt and tls.key from stsd-config and stsd-tls."""
        pod = _pod_spec()
        (mount,) = [m for m in _container()["volumeMounts"] if m["mountPath"] == "/etc/stsd"]
        assert mount.get("readOnly") is True
        assert "subPath" not in mount, "a subPath mount would never see a renewed certificate"
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        files: dict[str, tuple[str, str, str]] = {}
        for source in volume["projected"]["sources"]:
            ((kind, ref),) = source.items()
            for item in ref["items"]:
                files[posixpath.join(mount["mountPath"], item["path"])] = (
                    kind,
                    ref["name"],
                    item["key"],
                )
        assert files == {
            "/etc/stsd/stsd.yaml": ("configMap", "stsd-config", "stsd.yaml"),
            "/etc/stsd/tls/tls.crt": ("secret", "stsd-tls", "tls.crt"),
            "/etc/stsd/tls/tls.key": ("secret", "stsd-tls", "tls.key"),
        }
        # ... and they are the files the command line and the config name.
        config = yaml.safe_load(_config_text())
        assert STSD_COMMAND[-1] in files
        assert config["server"]["tls_cert"] in files
        assert config["server"]["tls_key"] in files

    def test_root_filesystem_is_read_only_but_tmp_is_writable(self) -> None:
        mounts = {m["mountPath"]: m for m in _container()["volumeMounts"]}
        volumes = {v["name"]: v for v in _pod_spec()["volumes"]}
        for path, mount in mounts.items():
            if not mount.get("readOnly"):
                assert "emptyDir" in volumes[mount["name"]], f"{path} writable but not scratch"

    def test_sts_service_keeps_the_upstream_name_and_port(self) -> None:
        service = _one("Service", "sts")
        spec = service["spec"]
        assert spec.get("type", "ClusterIP") == "ClusterIP"
        assert _selects(
            {"matchLabels": spec["selector"]}, _deployment()["spec"]["template"]["metadata"]["labels"]
        )
        (port,) = spec["ports"]  # the STS name carries the STS only
        assert port["name"] == "https"
        assert port["port"] == STS_PORT
        assert port.get("protocol", "TCP") == "TCP"
        assert _container_port(port["targetPort"]) == STS_PORT

    def test_metrics_service(self) -> None:
        service = _one("Service", "stsd-metrics")
        spec = service["spec"]
        assert _selects(
            {"matchLabels": spec["selector"]}, _deployment()["spec"]["template"]["metadata"]["labels"]
        )
        (port,) = spec["ports"]
        assert port["name"] == "metrics"
        assert port["port"] == METRICS_PORT
        assert _container_port(port["targetPort"]) == METRICS_PORT

    def test_only_the_sts_service_is_labelled_component_sts(self) -> None:
        """The migration applies everything else first: -l 'app.kubernetes.io/component!=sts'."""
        labelled = [
            (o["kind"], o["metadata"]["name"])
            for o in _resources()
            if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "sts"
        ]
        assert labelled == [("Service", "sts")]
        readme = (KUBE / "README.md").read_text(encoding="utf-8")
        assert "-l 'app.kubernetes.io/component!=sts'" in readme

    def test_poddisruptionbudget(self) -> None:
        pdb = _one("PodDisruptionBudget", "stsd")
        assert pdb["spec"]["minAvailable"] == 1
        assert _selects(
            pdb["spec"]["selector"], _deployment()["spec"]["template"]["metadata"]["labels"]
        )

    def test_configmap_in_cluster_settings(self) -> None:
        config = yaml.safe_load(_config_text())
        assert config["kubernetes"]["kubeconfig"] is None, "in a pod: the pod's ServiceAccount"
        assert config["kubernetes"]["audience"] == "sts.min.io"
        assert config["server"]["port"] == STS_PORT
        assert config["metrics"]["interface"] == "0.0.0.0"
        assert config["metrics"]["port"] == METRICS_PORT

    def test_termination_grace_period_covers_the_drain(self) -> None:
        """
        The kubelet kills stsd terminationGracePeriodSeconds after SIGTERM: that
        must leave room for the drain of the ConfigMap's config (stsd.ops.drain),
        its last connections' linger, and a margin.
        """
        defaults = {f.name: f.default for f in dataclasses.fields(ServerConfig)}
        server = yaml.safe_load(_config_text())["server"]
        delay = server.get("shutdown_delay_seconds", defaults["shutdown_delay_seconds"])
        grace = server.get("shutdown_grace_seconds", defaults["shutdown_grace_seconds"])
        assert (delay, grace) == (defaults["shutdown_delay_seconds"],
                                  defaults["shutdown_grace_seconds"]), "the ConfigMap shows defaults"
        period = _pod_spec()["terminationGracePeriodSeconds"]
        assert period >= delay + grace + drain.LINGER_SECONDS + 3
        # The delay is stsd's own: a preStop sleep would only add to it.
        assert "lifecycle" not in _container()

    def test_configmap_parses(self) -> None:
        """Every section stsd knows today, as stsd itself validates it."""
        tmp_path = temporary_directory(self)
        config = _config_with_test_tls(tmp_path)
        config.pop("metrics")
        parsed = parse_config(config)
        assert parsed.server.port == STS_PORT
        assert parsed.kubernetes.kubeconfig is None

    def test_configmap_metrics_section_parses(self) -> None:
        tmp_path = temporary_directory(self)
        config = _config_with_test_tls(tmp_path)
        try:
            parsed = parse_config(config)
        except ConfigError as e:
            if e.key == "metrics" and "unknown section" in e.problem:
                raise SkipTest("metrics section not in config yet")
            raise
        metrics = parsed.metrics
        assert metrics.port == METRICS_PORT
        assert metrics.interface == "0.0.0.0"

    def test_networkpolicy(self) -> None:
        policy = _one("NetworkPolicy", "stsd")
        spec = policy["spec"]
        assert _selects(spec["podSelector"], _deployment()["spec"]["template"]["metadata"]["labels"])
        assert "Ingress" in spec["policyTypes"]
        # 4223 from every pod of every namespace.
        assert {"namespaceSelector": {}} in list(_peers_allowed(policy, STS_PORT))
        # 9090 from the monitoring namespace only.
        metrics_peers = list(_peers_allowed(policy, METRICS_PORT))
        assert metrics_peers
        for peer in metrics_peers:
            assert peer is not None and "ipBlock" not in peer, peer
            assert peer["namespaceSelector"] == {
                "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
            }, peer
        # Nothing else is opened.
        opened = {_container_port(p["port"]) for rule in spec["ingress"] for p in rule["ports"]}
        assert opened == {STS_PORT, METRICS_PORT}

    def test_servicemonitor(self) -> None:
        (monitor,) = _documents(KUBE / "servicemonitor.yaml")
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["kind"] == "ServiceMonitor"
        assert monitor["metadata"]["namespace"] == NAMESPACE
        spec = monitor["spec"]
        assert "namespaceSelector" not in spec or spec["namespaceSelector"] == {
            "matchNames": [NAMESPACE]
        }
        service = _one("Service", "stsd-metrics")
        assert _selects(spec["selector"], service["metadata"]["labels"])
        assert not _selects(spec["selector"], _one("Service", "sts")["metadata"]["labels"])
        (endpoint,) = spec["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert endpoint.get("path", "/metrics") == "/metrics"
        assert endpoint.get("scheme", "http") == "http"

    def test_policybinding_example(self) -> None:
        (binding,) = _example("policybinding.yaml")
        assert binding["apiVersion"] == "sts.min.io/v1beta1"
        assert binding["kind"] == "PolicyBinding"
        assert DNS_LABEL.match(binding["metadata"]["namespace"])
        spec = binding["spec"]
        assert set(spec) == {"application", "policies"}
        assert set(spec["application"]) == {"namespace", "serviceaccount"}
        assert DNS_LABEL.match(spec["application"]["namespace"])
        assert DNS_LABEL.match(spec["application"]["serviceaccount"])
        assert spec["policies"] and all(isinstance(p, str) and p for p in spec["policies"])

    def test_app_pod_example_matches_the_binding(self) -> None:
        (binding,) = _example("policybinding.yaml")
        objects = _example("app-pod.yaml")
        pod = _one("Pod", objects=objects)
        account = _one("ServiceAccount", objects=objects)
        application = binding["spec"]["application"]
        assert pod["metadata"]["namespace"] == application["namespace"]
        assert (
            pod["spec"]["serviceAccountName"]
            == account["metadata"]["name"]
            == application["serviceaccount"]
        )

        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        tokens = {}
        for volume in pod["spec"]["volumes"]:
            for source in volume.get("projected", {}).get("sources", []):
                if "serviceAccountToken" in source:
                    tokens[volume["name"]] = source["serviceAccountToken"]
        ((volume_name, token),) = tokens.items()
        assert token["audience"] == "sts.min.io"
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume_name]
        assert env["AWS_WEB_IDENTITY_TOKEN_FILE"] == posixpath.join(mount["mountPath"], token["path"])
        assert env["AWS_ROLE_ARN"].startswith("arn:")
        assert env["AWS_ENDPOINT_URL_STS"] == (
            f"https://sts.{NAMESPACE}.svc:{STS_PORT}/sts/{binding['metadata']['namespace']}"
        )

    def test_readme_documents_the_optional_servicemonitor(self) -> None:
        readme = (KUBE / "README.md").read_text(encoding="utf-8")
        for needle in (
            "servicemonitor.yaml",
            "kubectl apply -k etc/kubernetes",
            "OPERATOR_STS_ENABLED",
        ):
            assert needle in readme
