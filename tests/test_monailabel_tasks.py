"""The MONAI Label app's task helpers: the root cause of a failed bundle run, and the label dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

pytest.importorskip("monailabel", reason="MONAI Label extra not installed (make venv installs it)")

from samora_monai.apps.monailabel_tasks import error_summary, label_dtype  # noqa: E402

MESSAGE = "labels/final/case0.nii.gz: label values range [0, 11], expected 0..8"


class _BadLabels(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        try:
            raise ValueError(MESSAGE)
        except ValueError as e:
            raise RuntimeError("applying transform <ValidateVolumed>") from e


def test_error_summary_of_instantiation_failure():
    """MONAI's 'Failed to instantiate component' wraps the package's error: the summary is the package's."""
    parser = ConfigParser({"x": {"_target_": "monai.data.partition_dataset", "data": [1], "ratios": "bad"}})
    with pytest.raises(RuntimeError, match="Failed to instantiate") as err:
        parser.get_parsed_content("x")
    assert "Failed to instantiate" not in error_summary(err.value)
    assert error_summary(err.value).startswith("TypeError: ")

    try:
        try:
            raise ValueError(MESSAGE)
        except ValueError as e:
            raise RuntimeError("Failed to instantiate component 'samora_monai.data.VolumeSliceDataset'") from e
    except RuntimeError as e:
        assert error_summary(e) == f"ValueError: {MESSAGE}"


def test_error_summary_of_dataloader_worker_failure():
    """A worker's error reaches the main process as text: the summary is the first exception of that traceback."""
    loader = torch.utils.data.DataLoader(_BadLabels(), num_workers=1)
    with pytest.raises(RuntimeError, match="DataLoader worker") as err:
        next(iter(loader))
    assert error_summary(err.value) == f"ValueError: {MESSAGE}"


@pytest.mark.parametrize("max_label, dtype", [(0, np.uint8), (8, np.uint8), (255, np.uint8), (256, np.uint16)])
def test_label_dtype(max_label, dtype):
    assert label_dtype(max_label) == np.dtype(dtype)
