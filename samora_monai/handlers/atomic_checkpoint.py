"""Checkpoints that survive a kill: atomic writes, no temporary files left behind, resume files pruned after a save.

MONAI's ``CheckpointSaver`` writes with ``atomic=False`` and ignite deletes the previous file *before* writing the
next one, so a run killed at the wrong moment leaves a truncated ``model.pt`` or no resume checkpoint at all.
:class:`AtomicCheckpointSaver` keeps MONAI's handler (same arguments, same events, same file names) and changes how
files reach the disk:

- every file is written to ``<save_dir>/.tmp-<id>-<name>`` and renamed onto its name (``os.replace``), so a reader
  (or a rerun) sees the old file or the new one, never a partial one;
- a fixed file name (``model.pt``, ``final_filename``) is replaced, never deleted first;
- interval (resume) checkpoints are pruned to the newest ``n_saved`` *after* the new one is on disk, including the
  ones an earlier (killed) run left, which ignite's in-memory list does not know about;
- ``.tmp-*`` files left by a killed run are removed when the handler is attached (one writer per ``save_dir``).
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

from samora_monai.utils import atomic_output

__all__ = ["AtomicCheckpointSaver", "AtomicDiskSaver", "resume_files"]

logger = logging.getLogger(__name__)

_RESUME = re.compile(r"_(epoch|iteration)=(\d+)\.pt$")
TMP_PREFIX = ".tmp-"  # the temporary names of samora_monai.utils.atomic_output


def resume_files(ckpt_dir: str | os.PathLike, prefix: str = "latest") -> list[str]:
    """The ``<prefix>_*_epoch=N.pt`` / ``..._iteration=N.pt`` files in ``ckpt_dir``, oldest first (by N, then by
    modification time)."""
    files = [f for f in glob.glob(os.path.join(os.fspath(ckpt_dir), f"{prefix}_*.pt")) if _RESUME.search(f)]
    return sorted(files, key=lambda f: (int(_RESUME.search(f).group(2)), os.path.getmtime(f)))


class AtomicDiskSaver(DiskSaver):
    """Ignite ``DiskSaver`` writing through a temporary file and ``os.replace``; ``filename`` fixes the name of
    every file it writes (MONAI's ``key_metric_filename`` / ``final_filename``)."""

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None, save_on_rank: int = 0) -> None:
        super().__init__(dirname, atomic=True, create_dir=True, require_empty=False, save_on_rank=save_on_rank)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        with atomic_output(self.dirname / (self.filename or filename)) as tmp:
            torch.save(checkpoint, tmp, **self.kwargs)

    def remove(self, filename: str) -> None:
        """Delete an outdated file; a fixed name is left for the next save to replace atomically."""
        if self.filename is None and idist.get_rank() == self.save_on_rank:
            (self.dirname / filename).unlink(missing_ok=True)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI ``CheckpointSaver`` (same arguments) whose files are written atomically and whose interval checkpoints
    are pruned to the newest ``n_saved`` after each save, stale ones from earlier runs included."""

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                ckpt.save_handler = AtomicDiskSaver(save_dir, getattr(ckpt.save_handler, "filename", None))
        self.keep = None
        if self._interval_checkpoint is not None:  # ignite would delete the old file before writing the new one
            self.keep, self._interval_checkpoint.n_saved = self._interval_checkpoint.n_saved, None

    def attach(self, engine: Engine) -> None:
        if idist.get_rank() == 0:
            for stale in Path(self.save_dir).glob(f"{TMP_PREFIX}*"):
                logger.warning("removing %s, left by an interrupted save", stale)
                stale.unlink(missing_ok=True)
        super().attach(engine)

    def interval_completed(self, engine: Engine) -> None:
        super().interval_completed(engine)
        if self.keep is None or idist.get_rank() != 0:
            return
        # by write time: a stale higher-numbered file of an earlier run (--resume_checkpoint null) goes, the new stays
        files = sorted(resume_files(self.save_dir, self._interval_checkpoint.filename_prefix), key=os.path.getmtime)
        for old in files[: -self.keep]:
            os.remove(old)
            self.logger.info(f"Pruned older checkpoint: {old}")
