# -*- test-case-name: tests.test_kube -*-
"""
The Kubernetes API, spoken with treq: where the API server is and how to
authenticate (from a kubeconfig or the in-cluster service account, read by
the C{kubernetes} package's config loaders), TokenReview, list and get.

The C{kubernetes} package's REST client blocks; only its config loading is
used, at start-up and on the background credential refresh.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kubernetes.client import Configuration
from kubernetes.config import ConfigException, load_incluster_config, load_kube_config
from treq.client import HTTPClient
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from stsd import tls
from stsd.upstream import UpstreamError, request

log = Logger()

TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


class KubernetesError(Exception):
    """
    The API server failed or answered something unusable.
    """


class KubeAccessError(Exception):
    """
    The kubeconfig or in-cluster credentials could not be loaded.
    """


@dataclass
class KubeAccess:
    """
    Where the API server is and how to authenticate to it.

    The bearer header is refreshed by L{refresh} (the in-cluster token file
    rotates); the request path only reads L{authorization}.
    """

    host: str
    https: tls.VerifiedHTTPS
    configuration: Configuration
    authorization: str | None = None

    def refresh(self) -> None:
        """
        Re-read rotating credentials. Blocking file I/O, small and rare:
        call it from a timer, not per request.
        """
        # The loaders install a hook that re-reads an expired token file.
        self.authorization = self.configuration.get_api_key_with_prefix("BearerToken")


def load_access(kubeconfig: str | None) -> KubeAccess:
    """
    Load the API server address and credentials: from C{kubeconfig}, or
    from the pod's service account when it is C{None}.
    """
    configuration = Configuration()
    try:
        if kubeconfig is None:
            load_incluster_config(client_configuration=configuration)
        else:
            load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    except (ConfigException, OSError, ValueError, KeyError, TypeError) as e:
        source = kubeconfig or "in-cluster service account"
        raise KubeAccessError(f"cannot load Kubernetes credentials from {source}: {e}") from None
    if configuration.verify_ssl is False:
        raise KubeAccessError(
            "the kubeconfig disables TLS verification (insecure-skip-tls-verify); "
            "stsd verifies the API server: give it the cluster CA instead"
        )
    if not configuration.ssl_ca_cert:
        trust = tls.CertificateTrust((), system=True)
    else:
        trust = tls.trust_from_files([configuration.ssl_ca_cert], system=False)
    client_cert = client_key = None
    if configuration.cert_file and configuration.key_file:
        client_cert = tls.read_certificates(configuration.cert_file)[0]
        client_key = tls.read_private_key(configuration.key_file)
    access = KubeAccess(
        host=configuration.host.rstrip("/"),
        https=tls.VerifiedHTTPS(trust, client_cert, client_key),
        configuration=configuration,
    )
    access.refresh()
    return access


class KubernetesClient:
    """
    The few API calls stsd makes, each bounded by C{timeout} seconds.
    """

    def __init__(
        self, access: KubeAccess, http: HTTPClient, clock: IReactorTime, timeout: float
    ) -> None:
        self._access = access
        self._http = http
        self._clock = clock
        self._timeout = timeout

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._access.authorization:
            headers["Authorization"] = self._access.authorization
        return headers

    async def _call(
        self, method: str, path: str, target: str, body: bytes | None = None
    ) -> tuple[int, Any]:
        headers = self._headers()
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = await request(
                self._http, self._clock, method, self._access.host + path,
                target=target, timeout=self._timeout, headers=headers, data=body,
            )
        except UpstreamError as e:
            raise KubernetesError(str(e)) from None
        try:
            document = json.loads(response.body)
        except (ValueError, RecursionError):
            raise KubernetesError(
                f"{target}: HTTP {response.status} with a body that is not JSON"
            ) from None
        return response.status, document

    @staticmethod
    def _status_message(document: Any) -> str:
        if isinstance(document, dict) and isinstance(document.get("message"), str):
            return document["message"][:200]
        return "no message"

    async def token_review(self, token: str, audience: str) -> dict[str, Any]:
        """
        Ask the API server who C{token} belongs to.

        @return: the TokenReview's C{status}.
        @raise KubernetesError: the API server failed to answer.
        """
        body = json.dumps({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        }).encode()
        status, document = await self._call("POST", TOKENREVIEW_PATH, "TokenReview", body)
        if status not in (200, 201) or not isinstance(document, dict):
            raise KubernetesError(
                f"TokenReview: HTTP {status}: {self._status_message(document)}"
            )
        review_status = document.get("status")
        if not isinstance(review_status, dict):
            raise KubernetesError("TokenReview: the answer has no status")
        return review_status

    async def list(self, path: str, what: str) -> tuple[list[dict[str, Any]], str]:
        """
        List the objects at C{path}.

        @return: the items and the list's resourceVersion.
        """
        status, document = await self._call("GET", path, f"list {what}")
        if status != 200 or not isinstance(document, dict):
            raise KubernetesError(f"list {what}: HTTP {status}: {self._status_message(document)}")
        items = document.get("items")
        if items is None:
            items = []
        if not isinstance(items, list):
            raise KubernetesError(f"list {what}: items is not a list")
        version = (document.get("metadata") or {}).get("resourceVersion", "")
        return [item for item in items if isinstance(item, dict)], str(version)

    async def get(self, path: str, what: str) -> dict[str, Any] | None:
        """
        Get one object; L{None} when it does not exist.
        """
        status, document = await self._call("GET", path, f"get {what}")
        if status == 404:
            return None
        if status != 200 or not isinstance(document, dict):
            raise KubernetesError(f"get {what}: HTTP {status}: {self._status_message(document)}")
        return document

    async def get_json(self, path: str, what: str) -> dict[str, Any]:
        """
        Get a JSON document that is not an API object, such as the
        service-account issuer discovery (C{/.well-known/openid-configuration},
        C{/openid/v1/jwks}).

        @return: the document, a JSON object.
        @raise KubernetesError: the API server failed, or answered anything
            but HTTP 200 with a JSON object (403: RBAC does not allow it).
        """
        status, document = await self._call("GET", path, f"get {what}")
        if status != 200 or not isinstance(document, dict):
            raise KubernetesError(f"get {what}: HTTP {status}: {self._status_message(document)}")
        return document
