# -*- test-case-name: tests.test_fakes -*-
"""A strict in-process fake of the Kubernetes API surface stsd uses.

It verifies TokenReviews the way kube-apiserver does (RS256 signature, issuer,
audiences, time, ServiceAccount and pod existence), serves the custom resources
with list/watch semantics (resourceVersion, bookmarks, 410 after compaction)
and can inject faults. Everything runs on the reactor; nothing blocks.
"""

from __future__ import annotations

import base64
import bisect
import copy
import datetime
import hashlib
import hmac
import itertools
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from stsd.testing.faults import Faults, abort
from stsd.testing.tokens import TokenIssuer

__all__ = ["FakeKubernetes", "RecordedRequest"]

_KINDS = {  # plural -> (path prefix, apiVersion, kind)
    "policybindings": ("/apis/sts.min.io/v1beta1", "sts.min.io/v1beta1", "PolicyBinding"),
    "tenants": ("/apis/minio.min.io/v2", "minio.min.io/v2", "Tenant"),
    "secrets": ("/api/v1", "v1", "Secret"),
    "serviceaccounts": ("/api/v1", "v1", "ServiceAccount"),
}
_ROUTES = [
    (re.compile(rf"^{re.escape(prefix)}(?:/namespaces/(?P<ns>[^/]+))?/{plural}"
                r"(?:/(?P<name>[^/]+))?$"), plural)
    for plural, (prefix, _, _) in _KINDS.items()
]
_TOKENREVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
_SSAR = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
_SA_GROUPS = ("system:serviceaccounts",)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: bytes | None = field(default=None)

    def __repr__(self) -> str:
        # The body of a TokenReview is a bearer token: never print it.
        size = "None" if self.body is None else f"<{len(self.body)} bytes>"
        return (f"RecordedRequest(method={self.method!r}, path={self.path!r}, "
                f"query={self.query!r}, body={size})")


@dataclass(frozen=True)
class _Event:
    rv: int
    plural: str
    type: str
    obj: dict[str, Any]


class _AuthError(Exception):
    pass


def _status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                           "status": "Failure", "message": message, "reason": reason}
    if details is not None:
        out["details"] = details
    out["code"] = code
    return out


class _Watch:
    def __init__(self, request: Request, plural: str, ns: str | None, selector: dict[str, str], bookmarks: bool):
        self.request, self.plural, self.ns = request, plural, ns
        self.selector, self.bookmarks = selector, bookmarks
        self.done = False
        self.timer: IDelayedCall | None = None

    def matches(self, plural: str, obj: dict) -> bool:
        return plural == self.plural and _selected(obj, self.ns, self.selector)

    def send(self, etype: str, obj: dict) -> None:
        if not self.done:
            self.request.write(json.dumps({"type": etype, "object": obj}).encode() + b"\n")

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self.request.finish()

    def cut(self) -> None:
        if not self.done:
            self.done = True
            abort(self.request)


def _selected(obj: dict, ns: str | None, selector: dict[str, str]) -> bool:
    meta = obj["metadata"]
    if ns is not None and meta["namespace"] != ns:
        return False
    return all(meta[key.split(".", 1)[1]] == value for key, value in selector.items())


class _KubeResource(Resource):
    isLeaf = True

    def __init__(self, fake: FakeKubernetes):
        super().__init__()
        self._fake = fake

    def render(self, request: Request) -> bytes | int:
        return self._fake._render(request)


class FakeKubernetes:
    def __init__(
        self,
        issuer: TokenIssuer,
        *,
        client_token: str,
        clock: Any = None,
        api_audiences: Sequence[str] = ("https://kubernetes.default.svc.cluster.local",),
        leeway: int = 0,  # kube-apiserver allows 60 s; 0 keeps expiry tests crisp
    ) -> None:
        self.issuer = issuer
        self._client_token = client_token.encode()
        self._clock = clock
        self.api_audiences = list(api_audiences)
        self.leeway = leeway
        self.requests: list[RecordedRequest] = []
        self._serviceaccounts: dict[tuple[str, str], str] = {}
        self._deleted_pods: set[tuple[str, str]] = set()
        self._static: dict[bytes, tuple[str, tuple[str, ...], list[str] | None]] = {}
        self._objects: dict[str, dict[tuple[str, str], dict]] = {p: {} for p in _KINDS}
        self._rv = 0
        self._history: list[_Event] = []
        self._history_floor = 0  # watches from a resourceVersion below this get 410
        self._watches: set[_Watch] = set()
        self._faults = Faults(lambda prefix, path: path.startswith(prefix))
        # RBAC of the client token: (group, resource, verb) allowed; None allows all.
        self.granted: set[tuple[str, str, str]] | None = None
        # (group, resource, verb) of every request the client made, for RBAC checks.
        self.used_permissions: set[tuple[str, str, str]] = set()
        self._key_cache: dict[str, tuple[int, list[tuple[str, str]]]] = {}

    # -- plumbing -------------------------------------------------------------

    @property
    def clock(self) -> IReactorTime:
        if self._clock is None:
            from twisted.internet import reactor

            return reactor
        return self._clock

    def resource(self) -> Resource:
        return _KubeResource(self)

    def count(self, path_prefix: str) -> int:
        return sum(1 for r in self.requests if r.path.startswith(path_prefix))

    @property
    def resource_version(self) -> int:
        return self._rv

    def _timestamp(self) -> str:
        t = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    # -- identities -------------------------------------------------------------

    def create_serviceaccount(self, namespace: str, name: str) -> str:
        uid = self.issuer.uid(namespace, name)
        self._serviceaccounts[(namespace, name)] = uid
        # Also an object of the API (list, watch).
        if (namespace, name) not in self._objects["serviceaccounts"]:
            self._put("serviceaccounts", namespace, name, {}, create=True)
        return uid

    def has_serviceaccount(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self._serviceaccounts

    def object_count(self, plural: str) -> int:
        """How many objects of a kind (e.g. C{policybindings}) the API server holds."""
        return len(self._objects[plural])

    def delete_serviceaccount(self, namespace: str, name: str) -> None:
        del self._serviceaccounts[(namespace, name)]
        self._delete("serviceaccounts", namespace, name)

    def recreate_serviceaccount(self, namespace: str, name: str) -> str:
        """Delete and recreate: same name, new uid, old tokens stop working."""
        self._serviceaccounts.pop((namespace, name), None)
        if (namespace, name) in self._objects["serviceaccounts"]:
            self._delete("serviceaccounts", namespace, name)
        self.issuer.rotate_uid(namespace, name)
        return self.create_serviceaccount(namespace, name)

    def delete_pod(self, namespace: str, pod: str) -> None:
        self._deleted_pods.add((namespace, pod))

    def token_for(self, namespace: str, serviceaccount: str, **kwargs: Any) -> str:
        """Create the ServiceAccount if needed and mint a token at the fake's time."""
        if (namespace, serviceaccount) not in self._serviceaccounts:
            self.create_serviceaccount(namespace, serviceaccount)
        kwargs.setdefault("now", self.clock.seconds())
        return self.issuer.mint(namespace, serviceaccount, **kwargs)

    def add_static_token(self, token: str, username: str, groups: Sequence[str] = (),
                         *, audiences: Sequence[str] | None = None) -> None:
        """A non-ServiceAccount user; audiences None echoes the requested ones."""
        key = hashlib.sha256(token.encode()).digest()
        self._static[key] = (username, tuple(groups), None if audiences is None else list(audiences))

    # -- objects ----------------------------------------------------------------

    def _put(self, plural: str, namespace: str, name: str, spec_fields: dict, *, create: bool) -> dict:
        store = self._objects[plural]
        old = store.get((namespace, name))
        if create and old is not None:
            raise ValueError(f"{plural} {namespace}/{name} already exists")
        if not create and old is None:
            raise KeyError(f"{plural} {namespace}/{name} not found")
        self._rv += 1
        _, api_version, kind = _KINDS[plural]
        meta = {"name": name, "namespace": namespace,
                "uid": old["metadata"]["uid"] if old else str(uuid.uuid4()),
                "resourceVersion": str(self._rv),
                "creationTimestamp": old["metadata"]["creationTimestamp"] if old else self._timestamp()}
        obj = {"apiVersion": api_version, "kind": kind, "metadata": meta, **copy.deepcopy(spec_fields)}
        store[(namespace, name)] = obj
        self._emit(plural, "ADDED" if old is None else "MODIFIED", obj)
        return copy.deepcopy(obj)

    def _delete(self, plural: str, namespace: str, name: str) -> None:
        obj = copy.deepcopy(self._objects[plural].pop((namespace, name)))
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)  # deletion bumps the version
        self._emit(plural, "DELETED", obj)

    def add_policybinding(self, namespace: str, name: str, *, app_namespace: str,
                          serviceaccount: str, policies: list[str]) -> dict:
        spec = {"application": {"namespace": app_namespace, "serviceaccount": serviceaccount},
                "policies": list(policies)}
        return self._put("policybindings", namespace, name, {"spec": spec}, create=True)

    def update_policybinding(self, namespace: str, name: str, **changes: Any) -> dict:
        spec = copy.deepcopy(self._objects["policybindings"][(namespace, name)]["spec"])
        for key, value in changes.items():
            if key == "app_namespace":
                spec["application"]["namespace"] = value
            elif key == "serviceaccount":
                spec["application"]["serviceaccount"] = value
            elif key == "policies":
                spec["policies"] = list(value)
            else:
                raise TypeError(f"unknown PolicyBinding change {key!r}")
        return self._put("policybindings", namespace, name, {"spec": spec}, create=False)

    def delete_policybinding(self, namespace: str, name: str) -> None:
        self._delete("policybindings", namespace, name)

    def add_tenant(self, namespace: str, name: str, *, configuration_secret: str,
                   request_auto_cert: bool | None = None, external_cert_secret: list | None = None,
                   env: list[dict] | None = None) -> dict:
        spec: dict[str, Any] = {"configuration": {"name": configuration_secret},
                                "pools": [{"servers": 1, "name": "pool-0", "volumesPerServer": 1}]}
        if request_auto_cert is not None:
            spec["requestAutoCert"] = request_auto_cert
        if external_cert_secret is not None:
            spec["externalCertSecret"] = external_cert_secret
        if env is not None:
            spec["env"] = env
        return self._put("tenants", namespace, name, {"spec": spec}, create=True)

    def update_tenant(self, namespace: str, name: str, spec: dict) -> dict:
        return self._put("tenants", namespace, name, {"spec": spec}, create=False)

    def delete_tenant(self, namespace: str, name: str) -> None:
        self._delete("tenants", namespace, name)

    def add_secret(self, namespace: str, name: str, data: dict[str, bytes]) -> dict:
        """Create or replace (MODIFIED) a Secret; values are stored base64 like the API."""
        encoded = {k: base64.b64encode(v).decode() for k, v in data.items()}
        exists = (namespace, name) in self._objects["secrets"]
        return self._put("secrets", namespace, name, {"type": "Opaque", "data": encoded},
                         create=not exists)

    def config_env_secret(self, namespace: str, name: str, access_key: str, secret_key: str) -> dict:
        env = f'export MINIO_ROOT_USER="{access_key}"\nexport MINIO_ROOT_PASSWORD="{secret_key}"\n'
        return self.add_secret(namespace, name, {"config.env": env.encode()})

    def delete_secret(self, namespace: str, name: str) -> None:
        self._delete("secrets", namespace, name)

    # -- watch control ----------------------------------------------------------

    def _emit(self, plural: str, etype: str, obj: dict) -> None:
        self._history.append(_Event(self._rv, plural, etype, obj))
        for w in list(self._watches):
            if w.matches(plural, obj):
                w.send(etype, obj)

    def compact_history(self) -> None:
        """Forget history: watches and continues from older versions get 410 Expired."""
        self._history.clear()
        self._history_floor = self._rv

    def send_bookmark(self) -> None:
        for w in list(self._watches):
            if w.bookmarks:
                _, api_version, kind = _KINDS[w.plural]
                w.send("BOOKMARK", {"kind": kind, "apiVersion": api_version,
                                    "metadata": {"resourceVersion": str(self._rv)}})

    def cut_watches(self) -> None:
        """Drop every watch connection mid-stream (no terminating chunk)."""
        for w in list(self._watches):
            w.cut()
            self._forget(w)

    def end_watches(self) -> None:
        """End every watch cleanly, as the server does at timeoutSeconds."""
        for w in list(self._watches):
            w.finish()

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    # -- faults -----------------------------------------------------------------

    def fail(self, path_prefix: str, mode: str | None, times: int | None = None) -> None:
        """mode "500" | "hang" | "close" for requests under path_prefix; None removes."""
        if mode not in (None, "500", "hang", "close"):
            raise ValueError(f"unknown fault mode {mode!r}")
        self._faults.set(path_prefix, mode, times)

    def grant_only(self, permissions: Sequence[tuple[str, str, str]]) -> None:
        """
        Enforce RBAC like the real API server: from now on only these
        (group, resource, verb) are allowed to the client; others get 403.
        """
        self.granted = set(permissions)

    def revoke(self, group: str, resource: str, verb: str) -> None:
        if self.granted is not None:
            self.granted.discard((group, resource, verb))

    def _allowed(self, attributes: tuple[str, str, str]) -> bool:
        return self.granted is None or attributes in self.granted

    @property
    def hung(self) -> int:
        """How many requests a "hang" fault holds open now."""
        return self._faults.hung

    def clear_faults(self) -> None:
        """Remove faults and drop the connections of requests left hanging."""
        self._faults.clear()

    def shutdown(self) -> None:
        """Release everything held open (hung requests, watches)."""
        self.clear_faults()
        self.cut_watches()

    # -- HTTP -------------------------------------------------------------------

    def _render(self, request: Request) -> bytes | int:
        path = request.path.decode("utf-8", "replace")
        query = dict(parse_qsl(urlsplit(request.uri).query.decode("utf-8", "replace"),
                               keep_blank_values=True))
        method = request.method.decode("ascii", "replace")
        assert request.content is not None  # Twisted's, before render
        request.content.seek(0)
        body = request.content.read() if method in ("POST", "PUT", "PATCH") else None
        self.requests.append(RecordedRequest(method, path, query, body))

        fault = self._faults.take(path)
        if fault == "500":
            return _json(request, 500, _status(500, "InternalError", "fake Kubernetes: injected failure"))
        held = self._faults.connection(request, fault)
        if held is not None:
            return held

        if not self._authorized(request):
            return _json(request, 401, _status(401, "Unauthorized", "Unauthorized"))

        attributes = _attributes(method, path, query)
        if attributes is not None:
            self.used_permissions.add(attributes)
            if not self._allowed(attributes):
                group, resource, verb = attributes
                return _json(request, 403, _status(
                    403, "Forbidden",
                    f'{resource}{"." + group if group else ""} is forbidden: User '
                    f'"system:serviceaccount:minio-operator:stsd" cannot {verb} resource '
                    f'"{resource}" in API group "{group}"'))
        if path == _SSAR:
            if method != "POST":
                return _method_not_allowed(request)
            return self._ssar(request, body or b"")
        if path == _TOKENREVIEWS:
            if method != "POST":
                return _method_not_allowed(request)
            return self._tokenreview(request, body or b"")
        if path in ("/.well-known/openid-configuration", "/openid/v1/jwks"):
            if method != "GET":
                return _method_not_allowed(request)
            doc = self.issuer.openid_configuration() if path.startswith("/.well-known") else self.issuer.jwks()
            content_type = "application/json" if path.startswith("/.well-known") else "application/jwk-set+json"
            return _json(request, 200, doc, content_type)
        for pattern, plural in _ROUTES:
            m = pattern.match(path)
            if m is None:
                continue
            if method != "GET":
                return _method_not_allowed(request)
            if m["name"] is not None:
                if m["ns"] is None:  # /api/v1/secrets/x is not a real path
                    break
                return self._get(request, plural, m["ns"], m["name"])
            return self._list(request, plural, m["ns"], query)
        return _json(request, 404, _status(404, "NotFound", "the server could not find the requested resource",
                                          {}))

    def _ssar(self, request: Request, body: bytes) -> bytes:
        try:
            review = json.loads(body)
            attrs = review["spec"]["resourceAttributes"]
            key = (attrs.get("group", ""), attrs["resource"], attrs["verb"])
        except (ValueError, KeyError, TypeError):
            return _json(request, 400, _status(400, "BadRequest", "not a SelfSubjectAccessReview"))
        allowed = self._allowed(key)
        status: dict[str, Any] = {"allowed": allowed}
        if not allowed:
            status["reason"] = "no RBAC policy matched"
        return _json(request, 201, {**review, "status": status})

    def _sorted_keys(self, plural: str) -> list[tuple[str, str]]:
        cached = self._key_cache.get(plural)
        if cached is None or cached[0] != self._rv:
            cached = (self._rv, sorted(self._objects[plural]))
            self._key_cache[plural] = cached
        return cached[1]

    def _authorized(self, request: Request) -> bool:
        header = request.getHeader("authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return hmac.compare_digest(token.strip().encode(), self._client_token)

    def _get(self, request: Request, plural: str, ns: str, name: str) -> bytes:
        obj = self._objects[plural].get((ns, name))
        if obj is None:
            group = _KINDS[plural][1].rpartition("/")[0]
            details = {"name": name, **({"group": group} if group else {}), "kind": plural}
            return _json(request, 404, _status(404, "NotFound", f'{plural} "{name}" not found', details))
        return _json(request, 200, obj)

    def _list(self, request: Request, plural: str, ns: str | None, query: dict[str, str]) -> bytes | int:
        try:
            selector = _field_selector(query.get("fieldSelector", ""))
            if query.get("labelSelector"):
                raise ValueError("fake Kubernetes: labelSelector is not supported")
            rv = query.get("resourceVersion", "")
            if rv and not rv.isdigit():
                raise ValueError(f"Invalid value: {rv!r}: resourceVersion must be an integer")
            limit = int(query["limit"]) if query.get("limit") else None
        except ValueError as e:
            return _json(request, 400, _status(400, "BadRequest", str(e)))
        if query.get("watch") in ("1", "true"):
            return self._watch(request, plural, ns, selector, query)

        _, api_version, kind = _KINDS[plural]
        list_rv, start = self._rv, None
        if query.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(query["continue"]))
                list_rv, start = int(token["rv"]), tuple(token["start"])
            except (ValueError, KeyError, TypeError):
                return _json(request, 400, _status(400, "BadRequest", "continue key is not valid"))
            if list_rv < self._history_floor:
                return _json(request, 410, _status(410, "Expired", "The provided continue parameter is too old "
                                                  "to display a consistent list result."))
        # Sorted once per state (pages of a big list would otherwise re-sort
        # every object for each page), then a page is cut from the start key.
        ordered = self._sorted_keys(plural)
        first = 0 if start is None else bisect.bisect_right(ordered, start)
        store = self._objects[plural]
        page: list[tuple[str, str]] = []
        rest: list[tuple[str, str]] = []
        for key in itertools.islice(ordered, first, None):
            if not _selected(store[key], ns, selector):
                continue
            if limit and len(page) >= limit:
                rest.append(key)
                break  # only whether more remain matters, and how many is an estimate
            page.append(key)
        items = []
        for key in page:
            item = dict(self._objects[plural][key])
            if plural == "secrets":  # built-in list items carry no kind/apiVersion
                item.pop("kind"), item.pop("apiVersion")
            items.append(item)
        meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        if rest:
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"rv": list_rv, "start": list(page[-1])}).encode()).decode()
            if ns is None and not selector:
                # Like the API server: a count only when no selector applies.
                meta["remainingItemCount"] = len(ordered) - first - len(page)
        return _json(request, 200, {"kind": f"{kind}List", "apiVersion": api_version,
                                    "metadata": meta, "items": items})

    def _watch(self, request: Request, plural: str, ns: str | None, selector: dict[str, str], query: dict[str, str]) -> bytes | int:
        request.setResponseCode(200)
        request.setHeader("content-type", "application/json")
        w = _Watch(request, plural, ns, selector, query.get("allowWatchBookmarks") == "true")
        request.write(b"")  # flush headers now, as the API server does
        rv = query.get("resourceVersion", "")
        if rv not in ("", "0") and int(rv) < self._history_floor:
            w.send("ERROR", _status(410, "Expired", f"too old resource version: {rv} ({self._history_floor})"))
            w.finish()
            return NOT_DONE_YET
        # Registered before the replay, so a client gone mid-replay is cleaned up.
        if query.get("timeoutSeconds"):
            w.timer = self.clock.callLater(int(query["timeoutSeconds"]), w.finish)
        self._watches.add(w)
        request.notifyFinish().addBoth(lambda _: self._forget(w))
        if rv in ("", "0"):  # "start at most recent": synthetic ADDED for what exists
            for key in sorted(self._objects[plural]):
                if w.matches(plural, self._objects[plural][key]):
                    w.send("ADDED", self._objects[plural][key])
        else:
            for event in self._history:
                if event.rv > int(rv) and w.matches(event.plural, event.obj):
                    w.send(event.type, event.obj)
        return NOT_DONE_YET

    def _forget(self, w: _Watch) -> None:
        w.done = True
        self._watches.discard(w)
        if w.timer is not None and w.timer.active():
            w.timer.cancel()

    # -- TokenReview ------------------------------------------------------------

    def _tokenreview(self, request: Request, body: bytes) -> bytes:
        content_type = (request.getHeader("content-type") or "").split(";")[0].strip()
        if content_type != "application/json":
            return _json(request, 415, _status(415, "UnsupportedMediaType",
                                              f'the body of the request was in an unknown format - accepted media '
                                              f'types include: application/json (got "{content_type}")'))
        try:
            review = json.loads(body)
            if not isinstance(review, dict):
                raise ValueError("TokenReview must be a JSON object")
            if review.get("apiVersion") != "authentication.k8s.io/v1" or review.get("kind") != "TokenReview":
                raise ValueError("expected apiVersion authentication.k8s.io/v1, kind TokenReview")
            spec = review.get("spec")
            if not isinstance(spec, dict) or not isinstance(spec.get("token", ""), str):
                raise ValueError("spec.token must be a string")
            auds = spec.get("audiences") or []
            if not isinstance(auds, list) or not all(isinstance(a, str) for a in auds):
                raise ValueError("spec.audiences must be a list of strings")
        except ValueError as e:
            return _json(request, 400, _status(400, "BadRequest", str(e)))
        if not spec.get("token"):
            return _json(request, 400, _status(400, "BadRequest",
                                               "token is required for TokenReview in authentication"))
        try:
            user, audiences = self._authenticate(spec["token"], auds or self.api_audiences)
            result = {"authenticated": True, "user": user, "audiences": audiences}
        except _AuthError as e:
            result = {"user": {}, "error": str(e)}
        return _json(request, 201, {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                                    "metadata": {"creationTimestamp": None}, "spec": spec, "status": result})

    def _authenticate(self, token: str, target: list[str]) -> tuple[dict, list[str]]:
        static = self._static.get(hashlib.sha256(token.encode()).digest())
        if static is not None:
            username, groups, token_auds = static
            auds = target if token_auds is None else [a for a in target if a in token_auds]
            if not auds:
                raise _AuthError("[invalid bearer token, token lookup failed]")
            return {"username": username, "groups": [*groups, "system:authenticated"]}, auds

        def fail(msg: str) -> _AuthError:
            return _AuthError(f"[invalid bearer token, {msg}]")

        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise fail("token lookup failed") from None
        if unverified.get("iss") != self.issuer.issuer:
            raise fail("token lookup failed")  # not ours: the SA authenticator passes
        keys = self.issuer.public_keys()
        candidates = [keys[header["kid"]]] if header.get("kid") in keys else list(keys.values())
        claims = None
        if header.get("alg") == "RS256":  # never none/HS256/ES256 etc.
            for key in candidates:
                try:
                    claims = jwt.decode(token, key, algorithms=["RS256"],
                                        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                                                 "verify_aud": False, "verify_iss": False})
                    break
                except jwt.PyJWTError:
                    continue
        if claims is None:
            raise fail("square/go-jose: error in cryptographic primitive, token lookup failed")

        token_auds = claims.get("aud")
        token_auds = [token_auds] if isinstance(token_auds, str) else list(token_auds or [])
        auds = [a for a in token_auds if a in target]
        if not auds:
            raise fail(f"token audiences {json.dumps(token_auds)} is invalid for the target audiences "
                       f"{json.dumps(target)}")
        now = self.clock.seconds()
        if not isinstance(claims.get("exp"), (int, float)) or now > claims["exp"] + self.leeway:
            raise fail("service account token has expired")
        if isinstance(claims.get("nbf"), (int, float)) and now < claims["nbf"] - self.leeway:
            raise fail("service account token is not valid yet")
        k8s = claims.get("kubernetes.io") or {}  # None: missing, as below
        try:
            ns, sa = k8s["namespace"], k8s["serviceaccount"]["name"]
            sa_uid = k8s["serviceaccount"]["uid"]
        except (KeyError, TypeError):
            raise fail("service account token claims are missing kubernetes.io") from None
        if claims.get("sub") != f"system:serviceaccount:{ns}:{sa}":
            raise fail("sub does not match the kubernetes.io claims")
        current = self._serviceaccounts.get((ns, sa))
        if current is None:
            raise fail(f'serviceaccounts "{sa}" not found')
        if current != sa_uid:
            raise fail(f"service account UID ({current}) does not match claim ({sa_uid})")
        extra = {}
        pod = k8s.get("pod")
        if pod is not None:
            if (ns, pod.get("name")) in self._deleted_pods:
                raise fail(f'pods "{pod.get("name")}" not found')
            expected = self.issuer.pod_uid(ns, pod.get("name", ""))
            if pod.get("uid") != expected:
                raise fail(f"pod UID ({expected}) does not match claim ({pod.get('uid')})")
            extra = {"authentication.kubernetes.io/pod-name": [pod["name"]],
                     "authentication.kubernetes.io/pod-uid": [pod["uid"]]}
        user = {"username": f"system:serviceaccount:{ns}:{sa}", "uid": sa_uid,
                "groups": [*_SA_GROUPS, f"system:serviceaccounts:{ns}", "system:authenticated"]}
        if extra:
            user["extra"] = extra
        return user, auds


def _attributes(method: str, path: str, query: dict[str, str]) -> tuple[str, str, str] | None:
    """
    The RBAC (group, resource, verb) of a request, as the API server derives
    it; None for paths RBAC does not cover here (discovery, reviews of self).
    """
    if path == _TOKENREVIEWS and method == "POST":
        return ("authentication.k8s.io", "tokenreviews", "create")
    for pattern, plural in _ROUTES:
        m = pattern.match(path)
        if m is None or method != "GET":
            continue
        group = _KINDS[plural][1].rpartition("/")[0]
        if m["name"] is not None:
            return (group, plural, "get")
        return (group, plural, "watch" if query.get("watch") in ("1", "true") else "list")
    return None


def _field_selector(raw: str) -> dict[str, str]:
    out = {}
    for term in filter(None, raw.split(",")):
        key, sep, value = term.replace("==", "=").partition("=")
        if not sep or key not in ("metadata.name", "metadata.namespace") or "!" in key:
            raise ValueError(f'field label not supported: "{term}"')
        out[key] = value
    return out


def _method_not_allowed(request: Request) -> bytes:
    return _json(request, 405, _status(405, "MethodNotAllowed",
                                      "the server does not allow this method on the requested resource", {}))


def _json(request: Request, code: int, obj: Any, content_type: str = "application/json") -> bytes:
    request.setResponseCode(code)
    request.setHeader("content-type", content_type)
    return json.dumps(obj).encode()
