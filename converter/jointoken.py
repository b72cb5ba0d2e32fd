"""The bootstrap token `yurtctl convert --join-token-file` hands to each edge node's yurthub, and its checks
(`parse` and `read` also check the token `yurtctl node join` reads from its `--token-file`, `converter.joincli`).

The token travels only in files and in one Secret, never on a command line or in a Job's spec:
admin's file (owner-only) → Secret `kube-system/yurtctl-join-token` (made before the node Jobs, deleted when
the conversion completes, and by revert) → mounted read-only (0400) into each convert Job → copied by the
Job's entry script to the node under umask 077 → installed by `yurtctl node convert` as
`/etc/yurthub/join-token` (0600), which yurthub reads with `--join-token-file`.

A file, not an environment variable from the Secret: an environment is inherited by every process the Job
starts (pip, systemctl, nsenter) and shows in each one's /proc/<pid>/environ, while a file has one owner,
one mode, and is what yurthub reads anyway.
"""

from __future__ import annotations

import os
import re
import stat

from converter import errors

TOKEN = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")
"""The shape of a Kubernetes bootstrap token, `<token-id>.<token-secret>`."""
MAX_BYTES = 4096


def parse(text: str, source: str) -> str:
    """The token in `text` (surrounding whitespace allowed); the error names `source`, never the text."""
    token = text.strip()
    if not token:
        raise errors.PreflightFailed(f"{source}: empty; expected a bootstrap token <6 characters>.<16 characters>")
    if not TOKEN.fullmatch(token):
        raise errors.PreflightFailed(f"{source}: expected a bootstrap token <6 characters>.<16 characters> of [a-z0-9]")
    return token


def read(path: str) -> str:
    """The token in the admin's file `path`, which must be owner-only (mode & 0o077 == 0)."""
    source = f"--join-token-file {path}"
    try:
        with open(path, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            data = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise errors.PreflightFailed(f"{source}: no such file") from None
    except OSError as exc:
        raise errors.PreflightFailed(f"{source}: cannot read: {exc.strerror}") from None
    if mode & 0o077:
        raise errors.PreflightFailed(
            f"{source}: mode {stat.S_IMODE(mode):04o} lets other users read or change the token; "
            f"make it owner-only (chmod 600 {path})"
        )
    if len(data) > MAX_BYTES:
        raise errors.PreflightFailed(f"{source}: longer than {MAX_BYTES} bytes; expected one bootstrap token")
    return parse(data.decode("ascii", errors="replace"), source)


def in_flags(flags: str) -> bool:
    """Whether extra yurthub flags carry the token itself, which would put it in a Job's spec and on the
    node's process list."""
    return bool(re.search(r"(^|\s)--join-token(=|\s|$)", flags))
