"""A renewed certificate reaches a running frontend without a signal or a
restart (issue 14: an existing Secret, e.g. from cert-manager, reloaded
without a restart).

The files are laid out as the kubelet mounts a Secret: `tls.crt` and
`tls.key` are symlinks into `..data`, itself a symlink to a timestamped
directory, and an update writes a new directory and swaps `..data` with one
rename. The frontend stats its certificate, key and password files every few
seconds (FE_FILE_CHECK_MS in frontend/main.c) and reloads as on SIGHUP when
what they resolve to changed; when nothing changed it does not reload.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from test_frontend_tls_sni import implicit_tls, make_cert, peer_cn, wait_log

# FE_FILE_CHECK_MS is 5 s: a change is seen within two checks.
SEEN_WITHIN_S = 15


def publish(mount: Path, name: str, files: dict) -> None:
    """Write files into a new timestamped directory and point ..data at it,
    as the kubelet's atomic writer does."""
    d = mount / f"..{name}"
    d.mkdir()
    for fname, src in files.items():
        shutil.copy(src, d / fname)
    tmp = mount / "..data_tmp"
    os.symlink(d.name, tmp)
    os.replace(tmp, mount / "..data")
    for fname in files:
        link = mount / fname
        if not link.is_symlink():
            os.symlink(f"..data/{fname}", link)


def test_secret_update_reloads_certificate(cluster_factory, tmp_path):
    old = make_cert(tmp_path, "old", "old.test", "DNS:localhost")
    new = make_cert(tmp_path, "new", "new.test", "DNS:localhost")
    mount = tmp_path / "secret"
    mount.mkdir()
    publish(mount, "2026_12_01", {"tls.crt": old[0], "tls.key": old[1]})
    cl = cluster_factory(frontends=1, workers=0, frontend_extra={
        "smtp": {"tls_cert": mount / "tls.crt", "tls_key": mount / "tls.key"}})
    node = cl.frontends[0]
    wait_log(node, "event=tls_loaded", 1)
    s = implicit_tls(cl, "localhost")
    assert peer_cn(s) == "old.test"
    s.close()

    publish(mount, "2026_12_02", {"tls.crt": new[0], "tls.key": new[1]})
    wait_log(node, "event=reload reason=files_changed", 1, timeout=SEEN_WITHIN_S)
    wait_log(node, "event=tls_loaded", 2)
    s = implicit_tls(cl, "localhost")
    assert peer_cn(s) == "new.test"
    s.close()

    # Nothing changed since: no further reload.
    time.sleep(6)
    assert node.log.read_text().count("event=tls_loaded") == 2
    assert node.alive()
