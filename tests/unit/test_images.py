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


def _debian_root(root: Path) -> Path:
    """A merged-/usr Debian root in miniature: dpkg lists naming /lib and /usr paths, alternatives."""
    (root / "usr/lib/x86_64-linux-gnu/xtables").mkdir(parents=True)
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/share/doc/iptables").mkdir(parents=True)
    (root / "etc/alternatives").mkdir(parents=True)
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    for top, target in (("lib", "usr/lib"), ("sbin", "usr/sbin"), ("bin", "usr/bin")):
        (root / top).symlink_to(target)
    (root / "usr/sbin/xtables-nft-multi").write_bytes(b"\x7fELF multi")
    (root / "usr/sbin/xtables-nft-multi").chmod(0o755)
    (root / "usr/sbin/iptables-nft").symlink_to("xtables-nft-multi")
    (root / "usr/lib/x86_64-linux-gnu/xtables/libxt_comment.so").write_bytes(b"ext")
    (root / "usr/lib/x86_64-linux-gnu/libc.so.6").write_bytes(b"libc")
    (root / "usr/share/doc/iptables/changelog.gz").write_bytes(b"doc")
    for command in images.IPTABLES_COMMANDS:
        (root / "etc/alternatives" / command).symlink_to(f"/usr/sbin/{command.replace('tables', 'tables-nft', 1)}")
    lists = {
        "iptables.list": [
            "/.",
            "/usr/sbin",
            "/usr/sbin/xtables-nft-multi",
            "/usr/sbin/iptables-nft",
            "/usr/lib/x86_64-linux-gnu/xtables/libxt_comment.so",
            "/usr/share/doc/iptables/changelog.gz",
        ],
        "libc6:amd64.list": ["/.", "/lib/x86_64-linux-gnu/libc.so.6"],
    }
    for package in images.IPTABLES_PACKAGES:
        name = "iptables.list" if package == "iptables" else f"{package}:amd64.list"
        (root / "var/lib/dpkg/info" / name).write_text("\n".join(lists.get(name, ["/."])) + "\n")
    return root


def test_the_kube_proxy_image_takes_iptables_from_the_node_root_through_its_merged_usr(tmp_path: Path) -> None:
    files = images.iptables_files(_debian_root(tmp_path))
    assert files["usr/lib/x86_64-linux-gnu/libc.so.6"] == (b"libc", 0o644), "/lib/... found under usr/lib"
    assert files["usr/sbin/xtables-nft-multi"] == (b"\x7fELF multi", 0o755)
    assert files["usr/sbin/iptables-nft"] == "xtables-nft-multi"
    assert files["usr/sbin/iptables"] == "/usr/sbin/iptables-nft", "where the root's alternatives point"
    assert files["lib"] == "usr/lib"
    assert not [p for p in files if p.startswith("usr/share/")]


def test_a_node_root_without_iptables_is_refused_by_name(tmp_path: Path) -> None:
    root = _debian_root(tmp_path)
    (root / "var/lib/dpkg/info/libnftnl11:amd64.list").unlink()
    try:
        images.iptables_files(root)
    except RuntimeError as exc:
        assert "libnftnl11" in str(exc)
    else:
        raise AssertionError("a root missing a package was accepted")


def test_a_files_layer_has_every_parent_directory_and_is_byte_identical_every_time(tmp_path: Path) -> None:
    files = images.iptables_files(_debian_root(tmp_path))
    layer = images.files_layer(files, ("tmp",))
    assert layer == images.files_layer(files, ("tmp",))
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    for parent in ("usr", "usr/lib", "usr/lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu/xtables", "usr/sbin"):
        assert members[parent].isdir(), parent
    assert members["lib"].issym() and members["lib"].linkname == "usr/lib"
    assert members["tmp"].mode == 0o1777
    assert {m.mtime for m in members.values()} == {0}
