"""Networks: SAM backbone building and checkpoint loading, hierarchical LoRA, HL-Attn, decoders, SamoraNet."""

from samora_monai.networks.acceleration import autocast, compile_network
from samora_monai.networks.decoders import PromptFreeMaskDecoder
from samora_monai.networks.expert_io import load_expert, read_expert_file, save_expert
from samora_monai.networks.hl_attn import HLAttn, HLAttnLite, SumFusion, build_fusion
from samora_monai.networks.hsam_decoder import HSamStage2Decoder
from samora_monai.networks.lora import DEFAULT_LEVELS, HierarchicalLoRA, LoRAExpert
from samora_monai.networks.sam_backbone import SAM_VARIANTS, load_sam_state_dict, read_checkpoint
from samora_monai.networks.samora_block import SamoraBlock
from samora_monai.networks.samora_net import SamoraNet
from samora_monai.networks.stages import configure_stage, count_parameters, stage_network

__all__ = [
    "DEFAULT_LEVELS",
    "HLAttn",
    "HLAttnLite",
    "HSamStage2Decoder",
    "HierarchicalLoRA",
    "LoRAExpert",
    "PromptFreeMaskDecoder",
    "SAM_VARIANTS",
    "SamoraBlock",
    "SamoraNet",
    "SumFusion",
    "autocast",
    "build_fusion",
    "compile_network",
    "configure_stage",
    "count_parameters",
    "load_expert",
    "load_sam_state_dict",
    "read_checkpoint",
    "read_expert_file",
    "save_expert",
    "stage_network",
]
