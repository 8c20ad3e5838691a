"""Class-conditional diffusers ``UNet2DModel`` built from named size presets.

Why presets: a user picks a budget ("tiny" for tests, "small" for a laptop CPU,
"paper" for a GPU), not forty constructor arguments; tests can then check every
shipped configuration (e.g. per-sample gradients through Opacus) by iterating
``PRESETS``.

Class conditioning uses the UNet's own class embedding table with one extra row,
``num_classes``, that stands for "no label" (classifier-free guidance).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and diffusers load when a model is built, not when a preset is named (CLI start-up)
    import torch
    from diffusers import UNet2DModel

MODEL_META_FILE = "synthfed_model.json"


@dataclass(frozen=True)
class UNetPreset:
    """The size knobs of a UNet2DModel; everything else is fixed by ``build_unet``."""

    block_out_channels: tuple[int, ...]
    attention_levels: tuple[bool, ...]  # attention in the down/up block at each level
    layers_per_block: int
    mid_attention: bool
    norm_num_groups: int
    attention_head_dim: int
    dropout: float
    description: str

    @property
    def levels(self) -> int:
        return len(self.block_out_channels)


PRESETS: dict[str, UNetPreset] = {
    # Exercises every block type (attention included) in well under a second per step.
    "tiny": UNetPreset(
        block_out_channels=(16, 32),
        attention_levels=(False, True),
        layers_per_block=1,
        mid_attention=True,
        norm_num_groups=8,
        attention_head_dim=8,
        dropout=0.0,
        description="tests and smoke runs (~0.2M parameters)",
    ),
    # The CPU default: three levels (16->8->4 on digits, 28->14->7 on Fashion-MNIST).
    "small": UNetPreset(
        block_out_channels=(32, 64, 64),
        attention_levels=(False, False, True),
        layers_per_block=1,
        mid_attention=True,
        norm_num_groups=8,
        attention_head_dim=16,
        dropout=0.0,
        description="CPU runs (~1.2M parameters)",
    ),
    # Tun et al. 2023 scale: base 64 channels, four levels down to 4x4 on 32x32,
    # plain residual blocks (no attention), dropout. Meant for a GPU.
    "paper": UNetPreset(
        block_out_channels=(64, 128, 256, 256),
        attention_levels=(False, False, False, False),
        layers_per_block=2,
        mid_attention=False,
        norm_num_groups=32,
        attention_head_dim=64,
        dropout=0.1,
        description="GPU runs, Tun'23-sized residual U-Net (~25M parameters)",
    ),
}


@dataclass(frozen=True)
class ModelSpec:
    """What a saved model needs besides its weights: how to condition and sample it."""

    preset: str
    image_size: int
    channels: int
    num_classes: int
    class_names: tuple[str, ...]
    # The forward-noise schedule the model was trained with (NoiseSchedule.to_dict()):
    # sampling with any other schedule would be wrong, so it travels with the weights.
    schedule: dict = field(default_factory=dict)

    @property
    def null_label(self) -> int:
        """Embedding row meaning "unconditional" (classifier-free guidance)."""
        return self.num_classes

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        return cls(
            preset=str(data["preset"]),
            image_size=int(data["image_size"]),
            channels=int(data["channels"]),
            num_classes=int(data["num_classes"]),
            class_names=tuple(data["class_names"]),
            schedule=dict(data.get("schedule", {})),
        )


def check_image_size(preset: str, image_size: int) -> None:
    """Each down level halves the resolution and each up level doubles it back:
    sizes that do not halve exactly would come back with a different shape."""
    levels = PRESETS[preset].levels
    factor = 2 ** (levels - 1)
    if image_size % factor != 0:
        raise ValueError(
            f"preset {preset!r} has {levels} levels and needs an image size divisible by "
            f"{factor}; got {image_size} (resize the data, e.g. --image-size {((image_size + factor - 1) // factor) * factor})"
        )


def build_unet(spec: ModelSpec) -> "UNet2DModel":
    if spec.preset not in PRESETS:
        raise ValueError(f"unknown model preset {spec.preset!r}; choose from {sorted(PRESETS)}")
    check_image_size(spec.preset, spec.image_size)
    from diffusers import UNet2DModel

    p = PRESETS[spec.preset]
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in p.attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(p.attention_levels))
    return UNet2DModel(
        sample_size=spec.image_size,
        in_channels=spec.channels,
        out_channels=spec.channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=p.block_out_channels,
        layers_per_block=p.layers_per_block,
        add_attention=p.mid_attention,
        norm_num_groups=p.norm_num_groups,
        attention_head_dim=p.attention_head_dim,
        dropout=p.dropout,
        num_class_embeds=spec.num_classes + 1,
    )


def _contiguous_inputs(module, args: tuple) -> tuple:
    import torch

    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def add_contiguous_inputs(model: "torch.nn.Module") -> list:
    """Make every Conv2d and GroupNorm input contiguous (forward pre-hooks;
    returns the handles).

    Layers after diffusers' attention blocks receive strided (channels-last)
    tensors. Two failures follow on torch 2.13 CPU: Opacus's conv grad sampler
    returns all-zero per-sample gradients for such convs (DP silently broken,
    DESIGN.md §4), and a GroupNorm backward that needs its weight gradient but
    not its input gradient (a frozen backbone under FedRep) segfaults.
    Contiguous inputs avoid both, at the cost of a copy."""
    import torch

    kinds = (torch.nn.Conv2d, torch.nn.GroupNorm)
    return [m.register_forward_pre_hook(_contiguous_inputs) for m in model.modules() if isinstance(m, kinds)]


def save_model(model: "UNet2DModel", spec: ModelSpec, directory: str | Path) -> None:
    """A diffusers-loadable folder (config.json + safetensors) plus our spec."""
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    (directory / MODEL_META_FILE).write_text(json.dumps(spec.to_dict(), indent=2))


def load_model(directory: str | Path) -> tuple["UNet2DModel", ModelSpec]:
    directory = Path(directory)
    meta = directory / MODEL_META_FILE
    if not meta.is_file():
        raise FileNotFoundError(f"{directory} is not a synthfed model folder (no {MODEL_META_FILE})")
    spec = ModelSpec.from_dict(json.loads(meta.read_text()))
    from diffusers import UNet2DModel

    model = UNet2DModel.from_pretrained(directory, use_safetensors=True, low_cpu_mem_usage=False)
    return model, spec
