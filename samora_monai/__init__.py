"""samora_monai: SAMora (ICCV 2025) as a MONAI extension.

Stage 1 trains hierarchical LoRA experts (image, patch, pixel) on a frozen SAM encoder with
self-supervised objectives; stage 2 fuses them with HL-Attn and trains a prompt-free mask decoder.
Subpackages load on first access (``samora_monai.networks``), so ``$import samora_monai`` serves a bundle config.
"""

from samora_monai.utils import submodule_getattr

__version__ = "0.1.0"

__getattr__ = submodule_getattr(__name__)
