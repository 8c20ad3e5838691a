"""Class-conditional U-Nets (diffusers ``UNet2DModel``) from size presets."""

from synthfed.model.presets import (
    PRESETS,
    ModelSpec,
    UNetPreset,
    add_contiguous_inputs,
    build_unet,
    check_image_size,
    load_model,
    save_model,
)

__all__ = ["PRESETS", "add_contiguous_inputs", "ModelSpec", "UNetPreset", "build_unet", "check_image_size", "load_model", "save_model"]
