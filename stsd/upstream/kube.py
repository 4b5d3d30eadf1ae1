# -*- test-case-name: tests.test_kube -*-
"""
The Kubernetes API, spoken with treq: where the API server is and how to
authenticate (from a kubeconfig or the in-cluster service account, read by
the C{kubernetes} package's config loaders), TokenReview, list, get and
watch.

The C{kubernetes} package's REST client blocks; only its config loading is
used, at start-up and on the background credential refresh.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import yaml
from kubernetes.client import Configuration
from kubernetes.config import ConfigException, load_kube_config
from kubernetes.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_TOKEN_FILENAME,
    InClusterConfigLoader,
)
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from stsd.upstream import tls
from stsd.upstream.http import CappedBody, TreqClient, TreqHeaders, UpstreamError, describe, request, timed_out

log = Logger()

TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
LIST_PAGE_SIZE = 500

# A watch event is one JSON line; a line is never buffered beyond this.
MAX_WATCH_LINE_BYTES = 16 * 1024 * 1024
# The body of a refused watch (a Status) is read only this far.
MAX_WATCH_ERROR_BYTES = 64 * 1024


#: What a watch calls with each event as it arrives: its C{type} (C{ADDED},
#: C{MODIFIED}, C{DELETED}, C{BOOKMARK}, C{ERROR}) and its C{object}.
OnWatchEvent = Callable[[str, dict[str, Any]], None]


class KubernetesError(Exception):
    """
    The API server failed or answered something unusable.
    """


class WatchExpired(KubernetesError):
    """
    The API server refused a watch with HTTP 410 Gone: the resourceVersion
    it was to start from is too old. List again.
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
    #: Loaded from the pod's service account (not a kubeconfig).
    in_cluster: bool = False

    def refresh(self) -> None:
        """
        Re-read rotating credentials. Blocking file I/O, small and rare:
        call it from a timer, not per request.
        """
        # The loaders install a hook that re-reads an expired token file.
        self.authorization = self.configuration.get_api_key_with_prefix("BearerToken")


def load_access(
    kubeconfig: str | None, *, in_cluster: InClusterConfigLoader | None = None
) -> KubeAccess:
    """
    Load the API server address and credentials: from C{kubeconfig}, or
    from the pod's service account when it is C{None}.

    @param in_cluster: the loader of the pod's service account (tests point
        it at other files); by default the mounted token and CA.
    """
    configuration = Configuration()
    try:
        if kubeconfig is None:
            loader = in_cluster or InClusterConfigLoader(
                token_filename=SERVICE_TOKEN_FILENAME, cert_filename=SERVICE_CERT_FILENAME)
            loader.load_and_set(configuration)
        else:
            load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    except yaml.YAMLError as e:
        # The position and the problem only: a kubeconfig holds credentials.
        raise KubeAccessError(f"{kubeconfig} is not valid YAML ({_yaml_problem(e)})") from None
    except (ConfigException, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        source = kubeconfig or "in-cluster service account"
        raise KubeAccessError(f"cannot load Kubernetes credentials from {source}: {e}") from None
    if configuration.verify_ssl is False:
        raise KubeAccessError(
            "the kubeconfig disables TLS verification (insecure-skip-tls-verify); "
            "stsd verifies the API server: give it the cluster CA instead"
        )
    source = kubeconfig or "the in-cluster service account"
    if not configuration.ssl_ca_cert:
        trust = tls.CertificateTrust((), system=True)
    else:
        trust = tls.CertificateTrust(tuple(_pem(
            tls.read_certificates, configuration.ssl_ca_cert, "cluster CA certificate", source)))
    client_cert = client_key = None
    if configuration.cert_file and configuration.key_file:
        client_cert = _pem(tls.read_certificates, configuration.cert_file,
                           "client certificate", source)[0]
        client_key = _pem(tls.read_private_key, configuration.key_file, "client key", source)
    access = KubeAccess(
        host=configuration.host.rstrip("/"),
        https=tls.VerifiedHTTPS(trust, client_cert, client_key),
        configuration=configuration,
        in_cluster=kubeconfig is None,
    )
    access.refresh()
    return access


def tenant_trust(access: KubeAccess, ca_file: str | None) -> tls.CertificateTrust:
    """
    What tenants are verified against: the system store, the cluster's CA
    when running in the cluster (the operator's auto-certificates are signed
    by it) and C{ca_file} (C{tenants.ca_file}).
    """
    paths = []
    if access.in_cluster and access.configuration.ssl_ca_cert:
        paths.append(access.configuration.ssl_ca_cert)
    if ca_file:
        paths.append(ca_file)
    return tls.trust_from_files(paths, system=True)


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return where + (getattr(e, "problem", None) or type(e).__name__)


def _pem(read: Callable[[str], Any], path: str, what: str, source: str) -> Any:
    """
    C{read(path)}, or a L{KubeAccessError} naming the file and its role
    (the loaders write inline C{*-data} to temporary files: C{source} says
    where it came from).
    """
    try:
        found = read(path)
    except OSError as e:
        raise KubeAccessError(f"cannot read the {what} of {source} "
                              f"({path}: {e.strerror or e})") from None
    except (ValueError, TypeError):
        found = None
    if not found:
        raise KubeAccessError(f"the {what} of {source} is not PEM ({path})") from None
    return found


class KubernetesClient:
    """
    The few API calls stsd makes, each bounded by C{timeout} seconds.
    """

    def __init__(
        self, access: KubeAccess, http: TreqClient, clock: IReactorTime, timeout: float
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

    async def review(self, path: str, review: dict[str, Any], what: str) -> dict[str, Any]:
        """
        Create a review object (TokenReview, SelfSubjectAccessReview): the
        API server answers with its C{status}, which is returned.

        @raise KubernetesError: the API server failed to answer.
        """
        status, document = await self._call("POST", path, what, json.dumps(review).encode())
        if status not in (200, 201) or not isinstance(document, dict):
            raise KubernetesError(f"{what}: HTTP {status}: {self._status_message(document)}")
        review_status = document.get("status")
        if not isinstance(review_status, dict):
            raise KubernetesError(f"{what}: the answer has no status")
        return review_status

    async def token_review(self, token: str, audience: str) -> dict[str, Any]:
        """
        Ask the API server who C{token} belongs to.

        @return: the TokenReview's C{status}.
        @raise KubernetesError: the API server failed to answer.
        """
        return await self.review(TOKENREVIEW_PATH, {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        }, "TokenReview")

    async def list(
        self,
        path: str,
        what: str,
        *,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        page_size: int = LIST_PAGE_SIZE,
    ) -> tuple[list[Any], str]:
        """
        List the objects at C{path}, a page at a time: with 10^5 objects one
        response would be a 36 MB document parsed in one go, blocking the
        reactor for a second and more than doubling the memory it takes.

        @param transform: applied to each item as its page arrives (items it
            maps to C{None} are dropped), so that only the parsed records
            accumulate.
        @return: the items and the list's resourceVersion.
        """
        results: list[Any] = []
        version = ""
        token = ""
        separator = "&" if "?" in path else "?"
        while True:
            query = f"limit={page_size}" + (f"&continue={quote(token, safe='')}" if token else "")
            status, document = await self._call("GET", f"{path}{separator}{query}", f"list {what}")
            if status != 200 or not isinstance(document, dict):
                raise KubernetesError(
                    f"list {what}: HTTP {status}: {self._status_message(document)}")
            items = document.get("items")
            if items is None:
                items = []
            if not isinstance(items, list):
                raise KubernetesError(f"list {what}: items is not a list")
            for item in items:
                if isinstance(item, dict):
                    value = item if transform is None else transform(item)
                    if value is not None:
                        results.append(value)
            metadata = document.get("metadata") or {}
            if not version:
                # Every page of one list carries the list's resourceVersion.
                version = str(metadata.get("resourceVersion", ""))
            token = metadata.get("continue") or ""
            if not isinstance(token, str) or not token:
                return results, version

    async def get(self, path: str, what: str) -> dict[str, Any] | None:
        """
        Get one object; C{None} when it does not exist.
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

    async def watch(
        self,
        path: str,
        resource_version: str,
        on_event: OnWatchEvent,
        *,
        timeout_seconds: int,
        what: str = "objects",
        idle_seconds: float | None = None,
    ) -> None:
        """
        Watch the objects at C{path} from C{resource_version} (with
        bookmarks), calling C{on_event(type, object)} for each event as it
        arrives, C{ERROR} events included.

        The response headers must arrive within the client's timeout; after
        that the stream may be silent for at most C{idle_seconds} (default:
        C{timeout_seconds} plus the client's timeout, by when the API server
        should have ended it) before it is given up. Cancelling the returned
        coroutine's Deferred closes the connection.

        @return: when the API server ends the stream (at C{timeout_seconds}).
        @raise WatchExpired: HTTP 410: C{resource_version} is too old.
        @raise KubernetesError: an HTTP error, no answer in time, a silent
            stream, a malformed or overlong event, or a connection cut
            mid-stream. An exception raised by C{on_event} ends the watch
            and is raised as it is.
        """
        params = {"watch": "1", "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(int(timeout_seconds))}
        if resource_version:
            params["resourceVersion"] = resource_version
        url = self._access.host + path + ("&" if "?" in path else "?") + urlencode(params)
        target = f"watch {what}"
        idle = idle_seconds if idle_seconds is not None else timeout_seconds + self._timeout
        headers: TreqHeaders = {k: [v] for k, v in self._headers().items()}

        requested = self._http.request("GET", url, headers=headers, unbuffered=True)
        requested.addTimeout(self._timeout, self._clock, onTimeoutCancel=timed_out)
        try:
            response = await requested
        except TimeoutError:
            raise KubernetesError(f"{target}: no answer within {self._timeout:g} seconds") from None
        except CancelledError:
            raise
        except Exception as e:
            # Name the kind of failure only: exception texts can quote the request.
            raise KubernetesError(f"{target}: {describe(e, text=False)}") from None

        if response.code != 200:
            reader = CappedBody(MAX_WATCH_ERROR_BYTES)
            response.deliverBody(reader)
            reader.done.addTimeout(self._timeout, self._clock)
            try:
                document: Any = json.loads(await reader.done)
            except CancelledError:
                raise
            except Exception:
                document = None
            message = f"{target}: HTTP {response.code}: {self._status_message(document)}"
            if response.code == 410:
                raise WatchExpired(message)
            raise KubernetesError(message)

        stream = _EventStream(target, on_event, self._clock, idle, MAX_WATCH_LINE_BYTES)
        response.deliverBody(stream)
        await stream.done


class _EventStream(Protocol):
    """
    Read a watch response: newline-delimited JSON events, each handed to
    C{on_event} as soon as its line is complete.

    A partial line is held, at most C{max_line} bytes of it; the stream may
    be silent for at most C{idle_seconds} of C{clock}. Whatever ends the
    stream early (cancelling L{done}, a silent stream, a bad event, an
    exception from C{on_event}) closes the connection: a watch connection
    must not outlive its use.
    """

    def __init__(
        self,
        target: str,
        on_event: OnWatchEvent,
        clock: IReactorTime,
        idle_seconds: float,
        max_line: int,
    ) -> None:
        self._target = target
        self._on_event = on_event
        self._idle_seconds = idle_seconds
        self._max_line = max_line
        self._partial: list[bytes] = []
        self._partial_size = 0
        self._settled = False
        self._timer: IDelayedCall | None = clock.callLater(idle_seconds, self._idle)
        self.done: Deferred[None] = Deferred(self._cancelled)

    def dataReceived(self, data: bytes) -> None:
        if self._settled:
            return
        if self._timer is not None:
            self._timer.reset(self._idle_seconds)
        if b"\n" not in data:
            self._partial.append(data)
            self._partial_size += len(data)
            if self._partial_size > self._max_line:
                self._fail(Failure(KubernetesError(
                    f"{self._target}: an event longer than {self._max_line} bytes")))
            return
        lines = data.split(b"\n")
        if self._partial:
            lines[0] = b"".join(self._partial) + lines[0]
        rest = lines.pop()
        self._partial = [rest] if rest else []
        self._partial_size = len(rest)
        for line in lines:
            if self._settled:
                return
            self._deliver(line)
        if not self._settled and self._partial_size > self._max_line:
            self._fail(Failure(KubernetesError(
                f"{self._target}: an event longer than {self._max_line} bytes")))

    def _deliver(self, line: bytes) -> None:
        if len(line) > self._max_line:
            self._fail(Failure(KubernetesError(
                f"{self._target}: an event longer than {self._max_line} bytes")))
            return
        if not line.strip():
            return
        # Never quote the line in a message: Secret events carry credentials.
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            self._fail(Failure(KubernetesError(f"{self._target}: an event that is not JSON")))
            return
        if (not isinstance(event, dict) or not isinstance(event.get("type"), str)
                or not isinstance(event.get("object"), dict)):
            self._fail(Failure(KubernetesError(f"{self._target}: a malformed event")))
            return
        try:
            self._on_event(event["type"], event["object"])
        except Exception:
            self._fail(Failure())

    def _idle(self) -> None:
        self._timer = None
        self._fail(Failure(KubernetesError(
            f"{self._target}: no data for {self._idle_seconds:g} seconds")))

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _close(self) -> None:
        # IResponse.deliverBody: stopProducing abandons the body and closes
        # the connection.
        if self.transport is not None:
            # deliverBody's transport is an IPushProducer; Protocol declares ITransport.
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def _fail(self, failure: Failure) -> None:
        if self._settled:
            return
        self._settled = True
        self._stop_timer()
        self._close()
        self.done.errback(failure)

    def _cancelled(self, _: Deferred[None]) -> None:
        # The Deferred fails with CancelledError once this returns.
        self._settled = True
        self._stop_timer()
        self._close()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_timer()
        if self._settled:
            return
        self._settled = True
        if reason.check(ResponseDone, PotentialDataLoss):
            if b"".join(self._partial).strip():
                self.done.errback(KubernetesError(f"{self._target}: the stream ended inside an event"))
            else:
                self.done.callback(None)
        else:
            kind = describe(reason.value, text=False)
            self.done.errback(KubernetesError(
                f"{self._target}: connection lost mid-stream ({kind})"))
