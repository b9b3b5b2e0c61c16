"""The conv command as a user meets it: errors, formats, plugins, raw copies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from convcore.testing import run_conv, scan_dir


def test_help_lists_commands():
    p = run_conv("--help")
    assert p.returncode == 0
    for cmd in ("convert", "build", "formats", "info", "ls", "cat"):
        assert cmd in p.stdout


def test_formats_json_names_directions_options_and_distribution():
    p = run_conv("formats", "--json", check=True)
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    assert rows["raw"]["distribution"] == "conv"
    assert rows["raw"]["reads"] and rows["raw"]["writes"]
    assert rows["tar"]["distribution"] == "conv"
    assert rows["dir"]["distribution"] == "conv"
    ext4 = rows.get("ext4")
    if ext4 is not None:
        assert ext4["distribution"] == "conv-ext4"
        assert any(o["name"] == "size" for o in ext4["options"])


def test_raw_copy_keeps_holes_and_content(tmp_path):
    src = tmp_path / "in.img"
    with open(src, "wb") as f:
        f.write(os.urandom(70000))
        f.seek(8 << 20)
        f.write(b"tail")
        f.truncate(16 << 20)
    out = tmp_path / "out.img"
    run_conv("convert", f"raw:{src} -> raw:{out}", check=True)
    assert out.read_bytes() == src.read_bytes()
    assert os.stat(out).st_blocks * 512 <= 256 * 1024
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.img", "out.img"]


def test_user_errors_are_one_line_with_exit_codes(tmp_path):
    cases = [
        (("convert", f"raw:{tmp_path}/missing.img -> raw:{tmp_path}/o.img"), 1, "no such file"),
        (("convert", f"raw:{tmp_path}/x -> bogus -> raw:{tmp_path}/o.img"), 2, "unknown format"),
        (("convert", "raw:a ->"), 2, "bad chain"),
        (("convert", f"dir:{tmp_path} -> raw:{tmp_path}/o.img"), 2, "insert a filesystem"),
        (("info", f"{tmp_path}/missing.img"), 1, "no such file"),
    ]
    for args, code, words in cases:
        p = run_conv(*args)
        assert p.returncode == code, (args, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("conv: ") and words in lines[0], p.stderr
        assert "Traceback" not in p.stderr
    assert not (tmp_path / "o.img").exists()


def test_output_directory_missing_is_one_line(tmp_path):
    src = tmp_path / "in.img"
    src.write_bytes(b"x" * 512)
    p = run_conv("convert", f"raw:{src} -> raw:{tmp_path}/nodir/out.img")
    assert p.returncode == 2 and "does not exist" in p.stderr


def _fake_dist(site, name: str, entry_points: str) -> None:
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def test_broken_plugin_is_one_warning_and_others_work(tmp_path):
    site = tmp_path / "site"
    _fake_dist(site, "conv_broken", "[conv]\nbroken = conv_broken_does_not_exist\n")
    env = {"PYTHONPATH": str(site)}
    p = run_conv("formats", "--json", env=env)
    assert p.returncode == 0, p.stderr
    warnings = [line for line in p.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "'broken'" in warnings[0] and "conv_broken" in warnings[0]
    assert "raw" in {r["name"] for r in json.loads(p.stdout)}
    p = run_conv("formats", env={**env, "CONV_DISABLE_PLUGINS": "broken"})
    assert p.returncode == 0 and "warning" not in p.stderr


def test_disable_plugins_hides_their_formats():
    p = run_conv("formats", "--json", env={"CONV_DISABLE_PLUGINS": "listing,ext4"}, check=True)
    names = {r["name"] for r in json.loads(p.stdout)}
    assert "listing" not in names and "ext4" not in names and "raw" in names


def test_third_party_plugin_in_a_chain(tmp_path, sample_dir):
    """tests/plugin_example is installed as its own distribution (tox does it);
    its 'listing' sink then works in a chain like any built-in format."""
    p = run_conv("formats", "--json", check=True)
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    assert rows["listing"]["distribution"] == "conv-example"
    out = tmp_path / "listing.txt"
    run_conv("convert", f"dir:{sample_dir} -> listing:{out}", check=True)
    lines = out.read_text().splitlines()
    by_path = {line.rsplit(" ", 1)[1]: line.split(" ") for line in lines}
    assert by_path["/etc/hostname"][0] == "file"
    import hashlib
    expected = hashlib.sha256(open(os.path.join(sample_dir, "etc/hostname"), "rb").read())
    assert by_path["/etc/hostname"][4] == expected.hexdigest()
    assert by_path["/usr/bin/tool"][1] == "4755"
    assert len(lines) == len(scan_dir(sample_dir))


def test_source_date_epoch_clamps_times_in_the_output(tmp_path, sample_dir):
    import tarfile
    out = tmp_path / "t.tar"
    epoch = 1_600_000_000  # before the sample tree's mtimes
    run_conv("convert", f"dir:{sample_dir} -> tar:{out}", env={"SOURCE_DATE_EPOCH": str(epoch)},
             check=True)
    with tarfile.open(out) as tf:
        mtimes = {m.name: m.mtime for m in tf.getmembers()}
    assert mtimes and max(mtimes.values()) == epoch
    later = tmp_path / "u.tar"
    run_conv("convert", f"dir:{sample_dir} -> tar:{later}",
             env={"SOURCE_DATE_EPOCH": str(1_800_000_000)}, check=True)
    with tarfile.open(later) as tf:  # an epoch after every mtime changes none
        assert {int(m.mtime) for m in tf.getmembers()} == {1_700_000_000}


def test_info_json_on_a_directory_and_a_tar(tmp_path, sample_dir):
    report = json.loads(run_conv("info", "--json", sample_dir, check=True).stdout)
    assert report["tree"]["format"] == "dir"
    assert report["tree"]["entries"] == len(scan_dir(sample_dir))
    out = tmp_path / "t.tar.gz"
    run_conv("convert", f"dir:{sample_dir} -> tar:{out}", check=True)
    report = json.loads(run_conv("info", "--json", str(out), check=True).stdout)
    assert report["tree"]["format"] == "tar"
    assert report["tree"]["entries"] == len(scan_dir(sample_dir))


def test_unreadable_inputs_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.img"
    garbage.write_bytes(bytes(range(256)) * 4000)
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    for chain, words in ((f"image:{garbage} -> tar:{tmp_path}/o.tar", "no partition table or "
                          "filesystem"),
                         (f"image:{empty} -> dir:{tmp_path}/o", "no partition table"),
                         (f"ext4:{garbage} -> tar:{tmp_path}/o.tar", "not an ext2/3/4"),
                         (f"squashfs:{garbage} -> tar:{tmp_path}/o.tar", "squashfs")):
        p = run_conv("convert", chain)
        assert p.returncode == 1, (chain, p.stderr)
        line = p.stderr.strip()
        assert "\n" not in line and words in line and str(tmp_path) in line, line
    assert sorted(os.listdir(tmp_path)) == ["empty.img", "garbage.img"]


def test_ls_prints_undecodable_names_as_bytes_in_any_locale(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    name = b"latin1-\xe9t\xe9"
    open(os.path.join(os.fsencode(root), name), "w").close()
    for env in ({"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""},
                {"LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}):
        p = subprocess.run([sys.executable, "-m", "convcore.cli", "ls", str(root)],
                           capture_output=True, env={**os.environ, **env})
        assert p.returncode == 0, p.stderr
        assert name in p.stdout


@pytest.mark.parametrize("args, plain", [
    (["convert", "raw:a -> raw:b"], (["raw:a -> raw:b"], False, False, None)),
    (["-q", "--seed", "s", "convert", "raw:a", "->", "raw:b"],
     (["raw:a", "->", "raw:b"], True, False, "s")),
    (["--debug", "--seed=x", "convert", "raw:a -> raw:b"], (["raw:a -> raw:b"], False, True, "x")),
    (["convert"], None),
    (["convert", "--help"], None),
    (["convert", "raw:a", "--to", "raw:b"], None),
    (["--version", "convert", "x"], None),
    (["formats"], None),
    ([], None),
])
def test_plain_convert_is_recognised_only_without_options(args, plain):
    """What runs without typer is exactly a chain after known global options;
    everything else (help, unknown options) goes to typer."""
    from convcore.cli import _plain_convert
    assert _plain_convert(args) == plain


def test_entry_points_read_like_importlib_metadata():
    import importlib.metadata

    from convcore.plugins import entry_points
    for group in ("conv", "console_scripts"):
        ours = sorted((e.name, e.value, e.dist) for e in entry_points(group))
        theirs = sorted((e.name, e.value, e.dist.name)
                        for e in importlib.metadata.entry_points(group=group))
        assert ours == theirs, group
