"""Pod images packed locally as OCI archives; no registry is involved.

- pause and busybox: Debian's busybox-static.
- kube-proxy (`build_services`): the kube-proxy binary the harness built, and the iptables commands with
  their libraries copied from the node's Debian root (the files dpkg lists for those packages), as kubeadm's
  kube-proxy image carries iptables; the command names point where the root's `alternatives` point.
- CoreDNS (`build_services`): the CoreDNS binary alone, as upstream's image.

`ctr images import` takes the archives inside the node. Layers are built byte for byte the same way every
time (fixed ordering, owners and mtimes), so an image's digest only changes when its inputs do.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

PAUSE_IMAGE = "localhost/yurt-edge/pause:1"
BUSYBOX_IMAGE = "localhost/yurt-edge/busybox:1"
KUBE_PROXY_IMAGE = "localhost/yurt-edge/kube-proxy:1"
COREDNS_IMAGE = "localhost/yurt-edge/coredns:1"

IPTABLES_PACKAGES = (
    "iptables",
    "libxtables12",
    "libip4tc2",
    "libip6tc2",
    "libnftnl11",
    "libmnl0",
    "libnetfilter-conntrack3",
    "libnfnetlink0",
    "libc6",
)
"""Debian packages whose files make iptables run in the kube-proxy image (iptables and what it links)."""
IPTABLES_COMMANDS = (
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
)
"""The commands kube-proxy runs; each is a link to where the root's `/etc/alternatives` entry points."""
_LAYOUT = b"services-1"
"""Part of the services images' cache key: change it when the way they are packed changes."""
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SKIPPED = ("usr/share/", "usr/lib/x86_64-linux-gnu/gconv/", "etc/", "var/", "usr/libexec/")

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


def oci_archive(
    name: str,
    layer: bytes,
    *,
    entrypoint: list[str],
    cmd: list[str],
    path_env: str = "/bin",
    made_from: str = "busybox-static",
) -> bytes:
    """A whole OCI image layout as one tar, naming the image `name` for containerd."""
    blobs: dict[str, bytes] = {}
    layer_digest, layer_size = _blob(blobs, layer)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": [f"PATH={path_env}"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": f"yurt-edge testenv: {made_from}"}],
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


def _dpkg_list(rootfs: Path, package: str) -> list[str]:
    info = rootfs / "var/lib/dpkg/info"
    for name in (f"{package}:amd64.list", f"{package}.list"):
        if (info / name).exists():
            return (info / name).read_text().split("\n")
    raise RuntimeError(f"images: package {package} is not installed in the node's root {rootfs}")


def _in_root(rootfs: Path, path: str) -> str:
    """`path` (absolute, as dpkg lists it) with the root's top-level directory links resolved (`/lib` is
    `usr/lib` on a merged-/usr Debian), relative to the root."""
    head, _, rest = path.lstrip("/").partition("/")
    top = rootfs / head
    if top.is_symlink():
        head = os.readlink(top).strip("/")
    return f"{head}/{rest}" if rest else head


def iptables_files(rootfs: Path) -> dict[str, tuple[bytes, int] | str]:
    """What the kube-proxy image takes from the node's root: relative path to (content, mode) for a file, or
    to the link target for a symbolic link; plus the root's top-level directory links and the commands."""
    entries: dict[str, tuple[bytes, int] | str] = {}
    for package in IPTABLES_PACKAGES:
        for listed in _dpkg_list(rootfs, package):
            if not listed.strip() or listed == "/.":
                continue
            rel = _in_root(rootfs, listed)
            if rel.startswith(_SKIPPED):
                continue
            source = rootfs / rel
            if source.is_symlink():
                entries[rel] = os.readlink(source)
            elif source.is_file():
                entries[rel] = (source.read_bytes(), source.stat().st_mode & 0o777)
    for top in ("bin", "sbin", "lib", "lib64"):
        if (rootfs / top).is_symlink():
            entries[top] = os.readlink(rootfs / top)
    for command in IPTABLES_COMMANDS:
        entries[f"usr/sbin/{command}"] = os.readlink(rootfs / "etc/alternatives" / command)
    return entries


def files_layer(files: dict[str, tuple[bytes, int] | str], directories: tuple[str, ...] = ()) -> bytes:
    """An uncompressed layer of `files` (as `iptables_files` gives them), every parent directory included."""
    dirs = set(directories)
    for path in files:
        parts = path.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in sorted(dirs - set(files)):
            _add(tar, directory, kind=tarfile.DIRTYPE, mode=0o1777 if directory == "tmp" else 0o755)
        for path, entry in sorted(files.items()):
            if isinstance(entry, str):
                _add(tar, path, kind=tarfile.SYMTYPE, link=entry, mode=0o777)
            else:
                _add(tar, path, data=entry[0], mode=entry[1])
    return buf.getvalue()


def _binary(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), 0o755


def build_services(directory: Path, *, kube_proxy: Path, coredns: Path, rootfs: Path) -> list[Path]:
    """Write the kube-proxy and CoreDNS archives into `directory`, keyed by their inputs (the binaries'
    bytes and the node root's name, which is keyed by its package list), reusing them when unchanged."""
    directory.mkdir(parents=True, exist_ok=True)
    proxy_key = hashlib.sha256(_LAYOUT + kube_proxy.read_bytes() + rootfs.name.encode()).hexdigest()[:12]
    dns_key = hashlib.sha256(_LAYOUT + coredns.read_bytes()).hexdigest()[:12]
    proxy_path = directory / f"kube-proxy-{proxy_key}.tar"
    dns_path = directory / f"coredns-{dns_key}.tar"
    common = ("etc", "tmp", "run", "proc", "sys", "dev", "var/lib")
    if not proxy_path.exists():
        files = iptables_files(rootfs)
        files["usr/local/bin/kube-proxy"] = _binary(kube_proxy)
        layer = files_layer(files, common)
        _write_archive(
            proxy_path,
            oci_archive(
                KUBE_PROXY_IMAGE, layer, entrypoint=[], cmd=["/usr/local/bin/kube-proxy"], path_env=_SYSTEM_PATH
            ),
        )
    if not dns_path.exists():
        layer = files_layer({"coredns": _binary(coredns)}, (*common, "etc/coredns"))
        _write_archive(
            dns_path, oci_archive(COREDNS_IMAGE, layer, entrypoint=["/coredns"], cmd=[], made_from="CoreDNS")
        )
    return [proxy_path, dns_path]


def _write_archive(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.rename(path)


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
        _write_archive(path, oci_archive(name, layer, entrypoint=entrypoint, cmd=cmd))
    return list(targets)
