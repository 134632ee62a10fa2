"""The ``samora`` Auto3DSeg algorithm template (SAMora stage 2 on 2D slices, whole-volume validation)."""
