"""The MONAI Label app that serves SAMora bundles (``<app>/main.py`` written by ``monailabel_install``).

MONAI Label's bundle tasks, with three changes:

- ``/infer/`` returns an unsigned integer label volume (uint8 up to 255 classes), like the bundle CLI, not float32;
- a failed ``/train/`` job ends with the package's own error (file and problem) as the last line of the job's
  status, instead of only ``Failed to instantiate component ...`` (the server keeps the last 20 output lines);
- the server refuses to start, with one message, when a bundle needs a SAM checkpoint that is not there.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.others.generic import get_bundle_models, strtobool

from samora_monai.apps.monailabel_config import require_sam_checkpoint

__all__ = ["SamoraBundleInferTask", "SamoraBundleTrainTask", "SamoraLabelApp", "error_summary", "label_dtype"]

logger = logging.getLogger(__name__)


def label_dtype(max_label: int) -> np.dtype:
    """The smallest unsigned integer type holding labels ``0..max_label``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_label <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"label {max_label} does not fit in uint32")


WORKER_TRACEBACK = "Original Traceback (most recent call last):"
_NOT_EXCEPTION_LINES = ("Traceback", "The above exception", "During handling", WORKER_TRACEBACK)


def _first_exception_line(traceback_text: str) -> str | None:
    """The first ``Type: message`` line of a formatted traceback: its root cause, since a chain prints causes
    first."""
    for line in traceback_text.splitlines():
        if line.strip() and not line[0].isspace() and not line.startswith(_NOT_EXCEPTION_LINES):
            return line
    return None


def error_summary(exc: BaseException) -> str:
    """``"<Type>: <message>"`` of the root cause of ``exc``: the innermost exception of its chain (``__cause__``,
    else ``__context__``), or, when that is a DataLoader worker's error (a traceback as text), the first exception
    of the worker's traceback. For a bundle run: the package's own error rather than MONAI's ``Failed to
    instantiate component ...`` or ``applying transform ...``."""
    seen = {id(exc)}
    while (nxt := exc.__cause__ or exc.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        exc = nxt
    message = str(exc)
    if WORKER_TRACEBACK in message:
        root = _first_exception_line(message.split(WORKER_TRACEBACK, 1)[1])
        if root:
            return root
    return f"{type(exc).__name__}: {message}"


class SamoraBundleInferTask(BundleInferTask):
    """``BundleInferTask`` whose segmentation result is written as uint8/uint16 class indices."""

    def writer(self, data: dict[str, Any], extension=None, dtype=None):
        if dtype is None and data.get("result_dtype") is None and self.type == InferType.SEGMENTATION:
            dtype = label_dtype(max(self.labels.values(), default=0) if isinstance(self.labels, dict) else 255)
        return super().writer(data, extension=extension, dtype=dtype)


class SamoraBundleTrainTask(BundleTrainTask):
    """``BundleTrainTask`` whose failure ends with the root cause: ``RuntimeError: training failed: <Type>: ...``,
    and whose bundle ``data_splits`` are MONAI Label's split of the datastore (not the bundle's dataset)."""

    def _update_overrides(self, overrides):
        """``data_splits``: MONAI Label's training items, and its validation items (disjoint from them) when there
        are any, so ``model.pt`` is selected on them; without, the last-epoch network."""
        splits = {"training": overrides[self.const.key_train_dataset_data()]}
        validation = overrides.get(self.const.key_validate_dataset_data())
        if validation:
            splits["validation"] = validation
        overrides["data_splits"] = splits

    def run_single_gpu(self, request, overrides):
        try:
            super().run_single_gpu(request, overrides)
        except Exception as e:
            summary = error_summary(e)
            logger.error("training failed: %s", summary)
            raise RuntimeError(f"training failed: {summary}") from e


class SamoraLabelApp(MONAILabelApp):
    """One inferer and one trainer per bundle in ``--conf models``, with ``random``/``first`` active learning."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.models = get_bundle_models(app_dir, conf)
        for path in self.models.values():
            require_sam_checkpoint(path)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="SAMora bundles",
            description="SAMora MONAI bundles (samora_monai), prompt-free segmentation",
        )

    def init_infers(self) -> dict[str, SamoraBundleInferTask]:
        return self._valid_tasks(SamoraBundleInferTask)

    def init_trainers(self) -> dict[str, SamoraBundleTrainTask]:
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        return self._valid_tasks(SamoraBundleTrainTask)

    def _valid_tasks(self, task_class: type) -> dict:
        """One ``task_class(bundle_path, conf)`` per model bundle, the valid ones by model name."""
        tasks = {name: task_class(path, self.conf) for name, path in self.models.items()}
        return {name: task for name, task in tasks.items() if task.is_valid()}

    def init_strategies(self):
        return {"random": Random(), "first": First()}

