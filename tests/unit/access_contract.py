"""The `converter.access.Api` contract, run against the in-memory fake (unit) and the real apiserver
(integration): the same checks, so the fake cannot drift from what the controller meets for real."""

from __future__ import annotations

import pytest

from converter import access, errors

CMS = "/api/v1/namespaces/default/configmaps"


def check(api: access.Api, name: str) -> None:
    path = f"{CMS}/{name}"
    _, start = api.list_at(CMS)
    assert api.get(path) is None
    created = api.create(
        CMS,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {"t": name}},
            "data": {"a": "1", "b": "2"},
        },
    )
    assert created["metadata"]["resourceVersion"]
    with pytest.raises(errors.Conflict):
        api.create(CMS, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}})
    patched = api.patch(path, {"data": {"a": None, "c": "3"}})
    assert patched["data"] == {"b": "2", "c": "3"}
    with pytest.raises(errors.Conflict):
        api.patch(path, {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "data": {"d": "4"}})
    assert [o["metadata"]["name"] for o in api.list(CMS, labels=f"t={name}")] == [name]
    assert api.list(CMS, labels=f"t={name}-other") == []
    assert [o["metadata"]["name"] for o in api.list(CMS, fields=f"metadata.name={name}")] == [name]
    current = api.get(path)
    assert current is not None
    current["data"] = {"z": "9"}
    assert api.replace(path, current)["data"] == {"z": "9"}
    assert api.delete(path) is True
    assert api.delete(path) is False
    with pytest.raises(errors.NotFound):
        api.patch(path, {"data": {"x": "1"}})
    seen: list[tuple[str, str]] = []
    for kind, obj in api.watch(CMS, start, timeout_s=5):
        if obj.get("metadata", {}).get("name") == name:
            seen.append((kind, obj["metadata"]["resourceVersion"]))
        if kind == "DELETED" and obj["metadata"]["name"] == name:
            break
    kinds = [k for k, _ in seen]
    assert kinds == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"], kinds
    versions = [int(v) for _, v in seen]
    assert versions == sorted(versions) and versions[0] > int(start)
