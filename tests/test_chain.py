"""Chain syntax and planning: parse, type-check, fail before writing."""

from __future__ import annotations

import pytest

from convcore.errors import UsageError
from convcore.pipeline import Chain, parse_chain


def test_parse_full_stage_syntax():
    stages = parse_chain("oci:./layout -> ext4[size=2G,label=root] -> gpt -> "
                         "qcow2[compress=zstd]:out.qcow2")
    assert [(s.name, s.options, s.path) for s in stages] == [
        ("oci", {}, "./layout"),
        ("ext4", {"size": "2G", "label": "root"}, None),
        ("gpt", {}, None),
        ("qcow2", {"compress": "zstd"}, "out.qcow2"),
    ]


def test_parse_separate_words_with_quoted_arrow_or_to():
    expected = [("dir", "./a"), ("ext4", None), ("raw", "b.img")]
    for words in (["dir:./a", "->", "ext4", "->", "raw:b.img"],
                  ["dir:./a", "--to", "ext4", "--to", "raw:b.img"]):
        assert [(s.name, s.path) for s in parse_chain(words)] == expected


def test_option_value_keeps_commas_of_a_list():
    (stage,) = parse_chain("dir[exclude=*.o,*.pyc,owner=0:0]:x")
    assert stage.options == {"exclude": "*.o,*.pyc", "owner": "0:0"}


def test_path_may_contain_colons_and_spaces():
    (stage,) = parse_chain("raw:/tmp/a:b c.img")
    assert stage.path == "/tmp/a:b c.img"


@pytest.mark.parametrize("text", ["", "dir:a ->", "-> raw:b", "dir:a -> -> raw:b",
                                  "dir[size=1:a", "ext4[=1]:x"])
def test_bad_syntax_is_a_usage_error(text):
    with pytest.raises(UsageError):
        Chain(parse_chain(text))


@pytest.mark.parametrize("text, words", [
    ("dir:a -> nosuchfmt -> raw:b", "unknown format 'nosuchfmt'"),
    ("dir:a -> raw[nosuch=1]:b", "unknown option 'nosuch'"),
    ("dir:a -> raw", "needs an output path"),
    ("dir -> raw:b", "first stage needs a path"),
    ("raw:a -> raw:a", "overwrite the input"),
    ("dir:a -> raw:b -> raw:c", "only the first and last"),
])
def test_chain_errors_name_the_stage(text, words):
    with pytest.raises(UsageError, match=words):
        Chain(parse_chain(text))


def test_kind_mismatch_names_a_fix(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    from convcore.format import Context
    with pytest.raises(UsageError, match=r"stage 2 .*raw.*insert a filesystem"):
        Chain(parse_chain(f"dir:{src} -> raw:{tmp_path}/out.img")).run(Context())
    assert not (tmp_path / "out.img").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]
