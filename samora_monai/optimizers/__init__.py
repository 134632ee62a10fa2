"""Learning-rate schedules."""

from samora_monai.optimizers.lr_scheduler import LR_SCHEDULES, warmup_lr, warmup_poly_lr

__all__ = ["LR_SCHEDULES", "warmup_lr", "warmup_poly_lr"]
