"""The locally packed OCI archives are well-formed, named for containerd, and reproducible."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from testenv import images


def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()}  # type: ignore[union-attr]


def test_archive_is_an_oci_layout_whose_digests_match_their_blobs(tmp_path: Path) -> None:
    layer = images.busybox_layer(images._busybox())
    archive = images.oci_archive("localhost/x/y:1", layer, entrypoint=["/bin/sh"], cmd=[])
    files = _members(archive)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/") and data:
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    index = json.loads(files["index.json"])
    entry = index["manifests"][0]
    assert entry["annotations"]["io.containerd.image.name"] == "localhost/x/y:1"
    manifest = json.loads(files[f"blobs/sha256/{entry['digest'].removeprefix('sha256:')}"])
    config = json.loads(files[f"blobs/sha256/{manifest['config']['digest'].removeprefix('sha256:')}"])
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]
    assert config["config"]["Entrypoint"] == ["/bin/sh"]


def test_layer_has_busybox_and_its_applets_and_is_byte_identical_every_time() -> None:
    busybox = images._busybox()
    layer = images.busybox_layer(busybox)
    assert layer == images.busybox_layer(busybox)
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert names["bin/busybox"].mode == 0o755
    assert names["bin/sh"].issym() and names["bin/sh"].linkname == "busybox"
    assert names["tmp"].mode == 0o1777


def test_build_reuses_archives_when_busybox_is_unchanged(tmp_path: Path) -> None:
    first = images.build(tmp_path)
    stamps = [p.stat().st_mtime_ns for p in first]
    assert images.build(tmp_path) == first
    assert [p.stat().st_mtime_ns for p in first] == stamps
