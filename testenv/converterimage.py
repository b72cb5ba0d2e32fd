"""The image of yurtctl's node Jobs for the tests, packed locally as an OCI archive (no registry): Debian's
busybox-static (sh, cp, mkdir, nsenter) plus yurt-edge's self-contained executable (hack/build-exe.sh) at
/opt/yurt-edge-node and the entry script, the same contents a user's build of images/converter/Containerfile
gives the Job (that one also carries Python, for yurt-manager, which the tests run on the host instead)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from testenv import cluster, exebuild, images
from testenv.node import Node

IMAGE = "localhost/yurt-edge/converter:test"
ENTRY = cluster.REPO / "images" / "converter" / "yurt-node-entry.sh"


BUNDLE = "opt/yurt-edge-node"
"""Where the image carries the executable's tree (the entry script copies it to the node's /opt/yurt-edge)."""


def _layer(base: bytes, tree: Path) -> bytes:
    buf = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(base)) as src,
        tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out,
    ):
        for member in src.getmembers():
            out.addfile(member, src.extractfile(member) if member.isfile() else None)
        for directory in ("opt", BUNDLE, "usr", "usr/local", "usr/local/bin", "host"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            out.addfile(info)
        for path in sorted(tree.rglob("*")):
            info = tarfile.TarInfo(f"{BUNDLE}/{path.relative_to(tree)}")
            if path.is_symlink():
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, str(path.readlink()), 0o777
                out.addfile(info)
            elif path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                out.addfile(info)
            else:
                data = path.read_bytes()
                info.size, info.mode = len(data), path.stat().st_mode & 0o755
                out.addfile(info, io.BytesIO(data))
        data = ENTRY.read_bytes()
        info = tarfile.TarInfo("usr/local/bin/yurt-node-entry")
        info.size, info.mode = len(data), 0o755
        out.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build(directory: Path) -> Path:
    """The archive (rebuilt when the executable's build or the entry script change)."""
    exe = exebuild.build()
    digest = hashlib.sha256(ENTRY.read_bytes())
    digest.update(exe.directory.name.encode())
    path = directory / f"converter-{digest.hexdigest()[:12]}.tar"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        layer = _layer(images.busybox_layer(images._busybox()), exe.tree)
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
