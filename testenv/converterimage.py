"""The image of yurtctl's node Jobs for the tests, packed locally as an OCI archive (no registry): Debian's
busybox-static (sh, cp, mkdir, nsenter) plus yurt-edge's wheels and the entry script, the same contents a
user's build of images/converter/Containerfile gives the Job (that one also carries Python, for yurt-manager,
which the tests run on the host instead)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from testenv import cluster, hubinstall, images
from testenv.node import Node

IMAGE = "localhost/yurt-edge/converter:test"
ENTRY = cluster.REPO / "images" / "converter" / "yurt-node-entry.sh"


def _layer(base: bytes, wheels: Path) -> bytes:
    buf = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(base)) as src,
        tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out,
    ):
        for member in src.getmembers():
            out.addfile(member, src.extractfile(member) if member.isfile() else None)
        for directory in ("opt", "opt/yurt-edge", "opt/yurt-edge/wheels", "usr", "usr/local", "usr/local/bin", "host"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            out.addfile(info)
        files = [(f"opt/yurt-edge/wheels/{w.name}", w.read_bytes(), 0o644) for w in sorted(wheels.glob("*.whl"))]
        files.append(("usr/local/bin/yurt-node-entry", ENTRY.read_bytes(), 0o755))
        for name, data, mode in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            out.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build(directory: Path) -> Path:
    """The archive (rebuilt when the wheels or the entry script change)."""
    wheels = hubinstall.wheelhouse()
    digest = hashlib.sha256(ENTRY.read_bytes())
    for w in sorted(wheels.glob("*.whl")):
        digest.update(w.name.encode() + hashlib.sha256(w.read_bytes()).digest())
    path = directory / f"converter-{digest.hexdigest()[:12]}.tar"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        layer = _layer(images.busybox_layer(images._busybox()), wheels)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(images.oci_archive(IMAGE, layer, entrypoint=[], cmd=["/bin/sh"]))
        tmp.rename(path)
    return path


def load(node: Node, archive: Path) -> None:
    """Import the archive into the node's containerd, as if the kubelet had pulled it."""
    target = node.directory / "state" / "var/lib/yurt-edge/images" / "converter.tar"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(archive.read_bytes())
    node.run(["ctr", "-n", "k8s.io", "images", "import", "/var/lib/yurt-edge/images/converter.tar"], timeout=120)
