"""Ignite's tqdm progress bar as a MONAI-style handler showing the loss."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine
from ignite.handlers import ProgressBar

from samora_monai.handlers.utils import engine_loss

__all__ = ["LossProgressBar"]


class LossProgressBar(ProgressBar):
    """Ignite's tqdm ``ProgressBar`` attached with the iteration loss shown; a MONAI-style handler
    (``attach(engine)``) for ``train#handlers``."""

    def __init__(self, persist: bool = True, **kwargs: Any) -> None:
        super().__init__(persist=persist, **kwargs)

    def attach(self, engine: Engine, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("output_transform", lambda out: {"loss": engine_loss(out)})
        super().attach(engine, *args, **kwargs)
