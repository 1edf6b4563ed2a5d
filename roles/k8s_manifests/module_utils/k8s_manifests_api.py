"""The Kubernetes API as plain JSON requests, on kubernetes.core's authenticated client
(its kubeconfig, context and every connection option), for the role's modules."""
from __future__ import annotations

import json
from urllib.parse import quote, urlencode

from ansible.module_utils.k8s_manifests_core import MANAGED_BY, server_message
from ansible_collections.kubernetes.core.plugins.module_utils.k8s.client import (
    get_api_client,
)


class ApiError(Exception):
    def __init__(self, status, body):
        super().__init__(server_message(status, body))
        self.status = status


class Stopped(Exception):
    """The API server stopped answering."""


def _transport_error(exc: BaseException):
    import urllib3

    seen = exc
    while seen is not None:
        if isinstance(seen, urllib3.exceptions.HTTPError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _socket_error(error: BaseException) -> OSError | None:
    """The operating system's error under urllib3's (ECONNREFUSED, ECONNRESET, a timeout):
    a MaxRetryError keeps it in .reason, a ProtocolError in its arguments."""
    import urllib3

    for item in [getattr(error, "reason", None), error.__cause__, error.__context__,
                 *error.args]:
        if isinstance(item, OSError) and not isinstance(item, urllib3.exceptions.HTTPError):
            return item
        found = _socket_error(item) if isinstance(item, BaseException) else None
        if found:
            return found
    return None


class Cluster:
    """The API, as plain JSON requests on kubernetes.core's authenticated client."""

    def __init__(self, module):
        self.api = get_api_client(module).client.client  # kubernetes.client.ApiClient
        self.server = self.api.configuration.host
        self.kinds: dict[tuple, dict] = {}

    def request(self, method, path, query=None, body=None, content_type=None,
                accept="application/json"):
        """JSON in and out; ``body`` an object (a str only for apply-patch+yaml, which
        the client sends as it is)."""
        url = path + ("?" + urlencode(query) if query else "")
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            args = self.api.param_serialize(method, url, header_params=headers, body=body,
                                            auth_settings=["BearerToken"])
            answer = self.api.call_api(*args, _request_timeout=30)
            data = answer.read()
        except Exception as exc:  # noqa: BLE001 - a transport error stops everything
            cut = _transport_error(exc)
            if cut is None:
                raise
            cause = _socket_error(cut)
            raise Stopped((cause.strerror or str(cause)) if cause else str(cut)) from None
        if answer.status >= 300:
            raise ApiError(answer.status, data)
        return json.loads(data) if data else {}

    def discover(self) -> dict:
        """{(apiVersion, kind): namespaced} of every kind served (aggregated discovery)."""
        accept = ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
                  "application/json")
        served = {}
        for root in ("/api", "/apis"):
            data = self.request("GET", root, accept=accept)
            if data.get("kind") != "APIGroupDiscoveryList":
                raise ApiError(None, f"{self.server}{root} does not serve aggregated "
                               "discovery (apidiscovery.k8s.io/v2): Kubernetes 1.30 or "
                               "later is needed")
            for group in data.get("items") or []:
                name = (group.get("metadata") or {}).get("name", "")
                for version in group.get("versions") or []:
                    api_version = f"{name}/{version['version']}" if name else version["version"]
                    for res in version.get("resources") or []:
                        if not res.get("responseKind"):
                            continue
                        key = (api_version, res["responseKind"]["kind"])
                        self.kinds[key] = {"plural": res["resource"],
                                           "namespaced": res.get("scope") == "Namespaced"}
                        served[key] = res.get("scope") == "Namespaced"
        return served

    def learn(self, obj) -> None:
        """A kind defined by a CRD of the set, once it is established."""
        spec = obj["definition"]["spec"]
        for version in spec.get("versions") or []:
            self.kinds[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = {
                "plural": spec["names"]["plural"], "namespaced": spec.get("scope") != "Cluster"}

    def path(self, api_version, kind, namespace=None, name=None) -> str:
        info = self.kinds[(api_version, kind)]
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        if info["namespaced"] and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{info['plural']}"
        return base + (f"/{quote(name, safe='')}" if name else "")

    def ref_path(self, ref) -> str:
        api_version, kind, namespace, name = ref.split("|")
        return self.path(api_version, kind, namespace or None, name)

    def apply(self, obj, manager, dry_run):
        query = {"fieldManager": manager, "force": "true"}
        if dry_run:
            query["dryRun"] = "All"
        return self.request("PATCH", self.ref_path(obj["ref"]), query,
                            json.dumps(obj["definition"]), "application/apply-patch+yaml")

    def get(self, ref):
        try:
            return self.request("GET", self.ref_path(ref))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list_ours(self, api_version, kind) -> dict:
        """{ref: object} of the objects of a kind carrying our label, across namespaces."""
        items = self.request("GET", self.path(api_version, kind),
                             {"labelSelector": f"{MANAGED_BY[0]}={MANAGED_BY[1]}"})
        out = {}
        for item in items.get("items") or []:
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
            meta = item["metadata"]
            out["|".join((api_version, kind, meta.get("namespace") or "", meta["name"]))] = item
        return out
