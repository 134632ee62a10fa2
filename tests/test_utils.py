"""samora_monai.utils: atomic output (permissions, folders), command-line flags, the shipped bundles."""

from __future__ import annotations

import os
import stat

import pytest

from samora_monai.utils import as_bool, atomic_output, bundle_dir, bundle_names


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_output_gives_plain_file_permissions(tmp_path, umask):
    """mkstemp would leave 0o600; an atomic output gets what open() gives a new file: 0o666 & ~umask."""
    old = os.umask(umask)
    try:
        target = tmp_path / "out.json"
        with atomic_output(target) as tmp:
            tmp.write_text("{}")
            os.chmod(tmp, 0o600)  # as a writer that uses mkstemp leaves it
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_atomic_output_folder(tmp_path):
    target = tmp_path / "app"
    with atomic_output(target) as tmp:
        (tmp / "sub").mkdir(parents=True)
        (tmp / "sub" / "main.py").write_text("x = 1\n")
    assert (target / "sub" / "main.py").read_text() == "x = 1\n"
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "broken") as tmp:
        tmp.mkdir()
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app"]  # no partial folder left


@pytest.mark.parametrize(("value", "expected"), [(True, True), ("true", True), ("On", True), (1, True),
                                                 (False, False), ("false", False), ("None", False), (0, False)])
def test_as_bool(value, expected):
    assert as_bool(value) is expected


def test_as_bool_rejects_other_text():
    with pytest.raises(ValueError, match="not a boolean flag: 'maybe'"):
        as_bool("maybe")


def test_bundle_dir_finds_the_shipped_bundles():
    assert {"samora_synapse", "samora_la"} <= set(bundle_names())
    path = bundle_dir("samora_synapse")
    assert (path / "configs" / "train.yaml").is_file() and (path / "configs" / "pretrain.yaml").is_file()
    with pytest.raises(FileNotFoundError, match="no bundle 'nope'.*samora_la"):
        bundle_dir("nope")


def test_raise_problems_names_every_nonempty_list():
    from samora_monai.utils import raise_problems

    raise_problems("x: ", {"missing": [], "unexpected": []})  # nothing to report
    with pytest.raises(ValueError) as info:
        raise_problems("model.pt does not fit: ", {"missing": ["a"], "unexpected": [], "shapes:": ["b: (1,) vs (2,)"]})
    assert str(info.value) == "model.pt does not fit: missing ['a']; shapes: ['b: (1,) vs (2,)']"
