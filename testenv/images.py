"""Pod images packed locally as OCI archives from Debian's busybox-static; no registry is involved.

`ctr images import` takes the archives inside the node. Layers are built byte for byte the same way every
time (fixed ordering, owners and mtimes), so an image's digest only changes when busybox does.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

PAUSE_IMAGE = "localhost/yurt-edge/pause:1"
BUSYBOX_IMAGE = "localhost/yurt-edge/busybox:1"

_PAUSE_SCRIPT = 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'


def _busybox() -> Path:
    found = shutil.which("busybox")
    if found is None:
        raise RuntimeError("images: busybox is needed to pack pod images (apt-get install busybox-static)")
    path = Path(found).resolve()
    if _is_dynamic(path):
        raise RuntimeError(f"images: {path} is not statically linked; install busybox-static")
    return path


def _is_dynamic(path: Path) -> bool:
    out = subprocess.run(["file", "-b", str(path)], capture_output=True, text=True, check=False).stdout
    return "dynamically linked" in out


def _add(
    tar: tarfile.TarFile,
    name: str,
    *,
    data: bytes | None = None,
    mode: int = 0o644,
    kind: bytes = tarfile.REGTYPE,
    link: str = "",
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
    info.linkname = link
    info.size = len(data) if data is not None else 0
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def busybox_layer(busybox: Path) -> bytes:
    """An uncompressed layer: /bin/busybox, a link per applet, and the few files a container expects."""
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("bin", "etc", "tmp", "proc", "sys", "dev", "root", "var"):
            _add(tar, directory, kind=tarfile.DIRTYPE, mode=0o1777 if directory == "tmp" else 0o755)
        _add(tar, "bin/busybox", data=busybox.read_bytes(), mode=0o755)
        for applet in sorted(set(applets) - {"busybox"}):
            _add(tar, f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox", mode=0o777)
        _add(
            tar,
            "etc/passwd",
            data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )
        _add(tar, "etc/group", data=b"root:x:0:\nnogroup:x:65534:\n")
    return buf.getvalue()


def _blob(blobs: dict[str, bytes], data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return digest, len(data)


def oci_archive(name: str, layer: bytes, *, entrypoint: list[str], cmd: list[str]) -> bytes:
    """A whole OCI image layout as one tar, naming the image `name` for containerd."""
    blobs: dict[str, bytes] = {}
    layer_digest, layer_size = _blob(blobs, layer)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "yurt-edge testenv: busybox-static"}],
    }
    config_digest, config_size = _blob(blobs, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer_size,
            }
        ],
    }
    manifest_digest, manifest_size = _blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                },
            }
        ],
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "oci-layout", data=b'{"imageLayoutVersion":"1.0.0"}')
        _add(tar, "index.json", data=json.dumps(index, sort_keys=True).encode())
        _add(tar, "blobs", kind=tarfile.DIRTYPE, mode=0o755)
        _add(tar, "blobs/sha256", kind=tarfile.DIRTYPE, mode=0o755)
        for digest, data in sorted(blobs.items()):
            _add(tar, f"blobs/sha256/{digest.removeprefix('sha256:')}", data=data)
    return buf.getvalue()


def build(directory: Path) -> list[Path]:
    """Write the pause and busybox archives into `directory` (reusing them when busybox is unchanged)."""
    busybox = _busybox()
    key = hashlib.sha256(busybox.read_bytes()).hexdigest()[:12]
    directory.mkdir(parents=True, exist_ok=True)
    targets = {
        directory / f"pause-{key}.tar": (PAUSE_IMAGE, ["/bin/sh", "-c", _PAUSE_SCRIPT], []),
        directory / f"busybox-{key}.tar": (BUSYBOX_IMAGE, [], ["/bin/sh"]),
    }
    missing = [p for p in targets if not p.exists()]
    layer = busybox_layer(busybox) if missing else b""
    for path in missing:
        name, entrypoint, cmd = targets[path]
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(oci_archive(name, layer, entrypoint=entrypoint, cmd=cmd))
        tmp.rename(path)
    return list(targets)
