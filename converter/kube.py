"""The real `access.Api`: the official kubernetes client, used only as an authenticated HTTP transport.

This is the one module of the project that imports `kubernetes` (import-linter keeps it so). Credentials come
from a kubeconfig file, or from the pod's service account when none is given (yurt-manager in the cluster).
"""

from __future__ import annotations

import builtins
import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client import exceptions as kube_errors

from converter import access, errors

_TIMEOUT = 30.0


class KubeApi:
    def __init__(self, kubeconfig: str = "", *, user_agent: str = "yurt-edge-converter") -> None:
        configuration = client.Configuration()
        try:
            if kubeconfig:
                config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]  # client is untyped
            else:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]  # client is untyped
        except (config.ConfigException, OSError) as exc:
            raise errors.ConverterError(f"cannot load cluster credentials: {exc}") from exc
        self._client = client.ApiClient(configuration)
        self._client.user_agent = user_agent
        self.server = str(configuration.host)
        self.ca_file = str(configuration.ssl_ca_cert or "")
        """The CA bundle the apiserver's serving certificate is checked against (empty: the system's)."""

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]  # client is untyped

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        resp = self._send(method, path, headers, body, _TIMEOUT)
        try:
            raw = resp.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise errors.Unreachable(f"{method} {path}: {exc}") from exc
        if resp.status >= 400:
            raise _status_error(resp.status, raw)
        return json.loads(raw) if raw else None

    def _send(
        self, method: str, path: str, headers: dict[str, str], body: Any, timeout: float | tuple[float, float]
    ) -> Any:
        """One request, its answer not read yet (a watch streams it)."""
        m, url, hdrs, data, post = self._client.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        try:
            return self._client.call_api(
                m, url, header_params=hdrs, body=data, post_params=post, _request_timeout=timeout
            )
        except kube_errors.ApiException as exc:
            if exc.status:
                raise _status_error(exc.status, exc.body) from exc
            raise errors.Unreachable(f"{method} {path}: {exc.reason}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise errors.Unreachable(f"{method} {path}: {exc}") from exc

    def get(self, path: str) -> access.Obj | None:
        try:
            obj: access.Obj = self._call("GET", path)
        except errors.NotFound:
            return None
        return obj

    def list(self, path: str, *, labels: str = "", fields: str = "") -> list[access.Obj]:
        query = {k: v for k, v in (("labelSelector", labels), ("fieldSelector", fields)) if v}
        items: list[access.Obj] = self._call("GET", path, query=query).get("items") or []
        return items

    def create(self, path: str, body: access.Obj) -> access.Obj:
        obj: access.Obj = self._call("POST", path, body)
        return obj

    def list_at(self, path: str) -> tuple[builtins.list[access.Obj], str]:
        listed = self._call("GET", path)
        return listed.get("items") or [], str((listed.get("metadata") or {}).get("resourceVersion", ""))

    def watch(self, path: str, resource_version: str, timeout_s: int) -> Iterator[tuple[str, access.Obj]]:
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(timeout_s),
            "allowWatchBookmarks": "true",
        }
        watch = f"{path}{'&' if '?' in path else '?'}{urllib.parse.urlencode(query)}"  # path may carry a selector
        resp = self._send("GET", watch, {"Accept": "application/json"}, None, (_TIMEOUT, timeout_s + 30))
        raw = resp.response
        try:
            if resp.status >= 400:
                raise _status_error(resp.status, raw.read())
            pending = b""
            for chunk in raw.stream(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = str(event.get("type", "")), event.get("object") or {}
                    if kind == "ERROR":
                        raise errors.from_status(
                            int(obj.get("code", 500)), obj.get("reason", ""), obj.get("message", "")
                        )
                    yield kind, obj
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise errors.Unreachable(f"watch {path}: {exc}") from exc
        finally:
            raw.close()  # a watch left early has unread bytes: its connection must not be reused
            raw.release_conn()

    def patch(self, path: str, body: access.Obj) -> access.Obj:
        obj: access.Obj = self._call("PATCH", path, body, content_type="application/merge-patch+json")
        return obj

    def replace(self, path: str, body: access.Obj) -> access.Obj:
        obj: access.Obj = self._call("PUT", path, body)
        return obj

    def delete(self, path: str) -> bool:
        try:
            self._call("DELETE", path, {"propagationPolicy": "Background"})
        except errors.NotFound:
            return False
        return True


def _status_error(status: int, raw: Any) -> errors.ApiError:
    reason, message = "", str(raw)[:500]
    try:
        body = json.loads(raw)
        reason, message = str(body.get("reason", "")), str(body.get("message", message))
    except (TypeError, ValueError):
        pass
    return errors.from_status(status, reason, message)
