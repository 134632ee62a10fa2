"""samora_monai.apps.bundle_run in-process: the dropped ``--key None`` overrides are found in both spellings, and the
failure reason is the innermost exception raised by the package (not MONAI's "Failed to instantiate" wrapper)."""

from __future__ import annotations

import pytest
from monai.transforms import Compose

from samora_monai.apps.bundle_run import check_command_line, dropped_none_overrides, failure_reason
from samora_monai.data import MapLabelsd
from samora_monai.utils import optional_value


def test_dropped_none_overrides_both_spellings():
    argv = ["run", "training", "--config_file", "c.yaml", "--label_mapping", "None", "--resume_checkpoint=None",
            "--voxel_spacing", "null", "--epochs", "2"]  # fmt: skip
    assert dropped_none_overrides(argv) == ["label_mapping", "resume_checkpoint"]
    with pytest.raises(ValueError, match=r"--label_mapping None --resume_checkpoint None: .* write --label_mapping "
                                         r"null --resume_checkpoint null"):  # fmt: skip
        check_command_line(argv)
    check_command_line(["run", "--label_mapping", "null"])
    check_command_line()  # pytest is not `python -m monai.bundle`: nothing to check


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("null", None), (" None ", None), ("NULL", None),
                                                 ("", ""), ({}, {}), ("/x/null.pt", "/x/null.pt")])  # fmt: skip
def test_optional_value(value, expected):
    assert optional_value(value) == expected


def test_failure_reason_is_the_package_message():
    try:
        try:
            Compose([MapLabelsd("label", {})])
        except ValueError as e:
            raise RuntimeError("Failed to instantiate component 'train#preprocessing'\nwith config ...") from e
    except RuntimeError as outer:
        reason = failure_reason(outer)
    assert reason.startswith("ValueError: label_mapping must be a non-empty") and "\n" not in reason
    assert failure_reason(KeyError("x")) == "KeyError: 'x'"
