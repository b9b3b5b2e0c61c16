"""End to end through the ``conv`` command: images in and out, judged by
unsquashfs, e2fsck/debugfs and umoci."""

from __future__ import annotations

import json
import os

import pytest

from convcore.testing import make_sample_dir, normalize_hardlinks, require_tool, run, scan_dir


def test_oci_to_squashfs_holds_what_umoci_unpacks(umoci_image, tmp_path, judge):
    require_tool("conv", "unsquashfs", "umoci")
    image = str(tmp_path / "root.sqfs")
    run("conv", "convert", f"oci[ref=img]:{umoci_image} -> squashfs -> raw:{image}")
    out = str(tmp_path / "squashfs-root")
    run("unsquashfs", "-no-progress", "-d", out, image)
    want = judge.unpack(umoci_image, "img", str(tmp_path / "bundle"))
    got = normalize_hardlinks(judge.view(scan_dir(out)))
    got[""].pop("mode"), want[""].pop("mode")  # umoci makes rootfs 0700 itself
    assert got == want
    assert os.path.isfile(os.path.join(out, "usr/bin/ls"))


def test_oci_to_ext4_passes_e2fsck(umoci_image, tmp_path):
    require_tool("conv", "e2fsck", "debugfs")
    image = str(tmp_path / "root.img")
    run("conv", "convert", f"oci[ref=img]:{umoci_image} -> ext4 -> raw:{image}")
    run("e2fsck", "-fn", image)
    cat = run("debugfs", "-R", "cat /etc/hostname", image).stdout
    assert cat == "renamed-box\n"
    listing = run("debugfs", "-R", "ls -p /etc", image).stdout
    assert "/shadow/" not in listing and "/hostname/" in listing


def test_info_shows_the_run_config(layout):
    require_tool("conv")
    L = layout
    L.image([[L.file("bin/app", b"x", mode=0o755)]],
            config={"Env": ["PATH=/bin"], "Entrypoint": ["/bin/app"], "Cmd": ["--serve"],
                    "WorkingDir": "/srv", "User": "app"})
    report = json.loads(run("conv", "info", "--json", f"oci:{L.root}").stdout)["tree"]
    assert report["Env"] == ["PATH=/bin"] and report["Entrypoint"] == ["/bin/app"]
    assert report["Cmd"] == ["--serve"]
    assert (report["WorkingDir"], report["User"], report["layers"]) == ("/srv", "app", 1)


def test_dir_to_oci_unpacked_by_umoci(tmp_path, judge):
    require_tool("conv", "umoci")
    src = make_sample_dir(str(tmp_path / "src"))
    layout = str(tmp_path / "layout")
    run("conv", "convert", f"dir:{src} -> oci[ref=v2,compress=gzip,level=9]:{layout}")
    got = judge.unpack(layout, "v2", str(tmp_path / "bundle"))
    want = normalize_hardlinks(judge.view(scan_dir(src)))
    got[""].pop("mode"), want[""].pop("mode")
    assert got == want


@pytest.mark.parametrize("chain, message", [
    ("oci[ref=nope]:{layout} -> dir:{out}", "no image with ref='nope'; refs there: latest"),
    ("oci[platform=linux]:{layout} -> dir:{out}", "not a platform: 'linux'"),
    ("oci:{missing} -> dir:{out}", "no such"),
])
def test_user_errors_are_one_line(layout, tmp_path, chain, message):
    require_tool("conv")
    L = layout
    L.image([[L.file("a")]])
    p = run("conv", "convert", chain.format(layout=L.root, out=tmp_path / "out",
                                            missing=tmp_path / "missing"), check=False)
    assert p.returncode != 0
    assert message in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
