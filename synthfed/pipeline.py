"""``ClassConditionalPipeline``: a synthfed model as a diffusers pipeline.

``synthfed export`` writes a pipeline folder (``model_index.json``, ``unet/``,
``scheduler/``, ``README.md``) and copies THIS FILE into it as
``pipeline.py``, so the folder loads with plain diffusers too::

    from synthfed.pipeline import ClassConditionalPipeline
    pipe = ClassConditionalPipeline.from_pretrained(folder)       # runs no code from the folder

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)  # runs folder/pipeline.py

That is why this module imports nothing from synthfed (only torch, numpy,
PIL and diffusers): it must run where synthfed is not installed. Its sampling
loop is therefore its own, not ``synthfed.diffusion.sample``; it does the
same arithmetic in the same order (one generator, labels in the given order
split into batches, DDIM with eta 0, the same guidance rule and pixel
rounding), and ``tests/integration/test_export.py`` checks that it reproduces
``synthfed generate`` pixel for pixel.

Classifier-free guidance follows synthfed's convention,
eps = (1 + w) eps(x, y) - w eps(x, null), where w = ``guidance_scale``;
diffusers' usual eps(x, null) + g (eps(x, y) - eps(x, null)) is the same rule
with g = 1 + w. ``guidance_scale=0`` is plain conditional sampling."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from PIL import Image

OUTPUT_TYPES = ("np", "pil", "pt")
# Arguments of ``from_pretrained`` that only say where the files are: passed to every component's loader.
_HUB_ARGUMENTS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "token")


class ClassConditionalPipeline(DiffusionPipeline):
    """Class-conditional image generation with a ``UNet2DModel`` whose class
    embedding has one row per class plus a null row (classifier-free guidance).

    ``class_names[k]`` is the name of label id k; ``null_label`` is the
    embedding row meaning "no label" (synthfed: the number of classes).
    Both are kept in ``model_index.json``."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, class_names: list | None = None,
                 null_label: int | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        rows = unet.config.num_class_embeds
        if rows is None or rows < 2:
            raise ValueError("the UNet has no class embedding with a null row (num_class_embeds); "
                             "it is not a class-conditional synthfed model")
        names = [str(n) for n in class_names] if class_names is not None else [str(k) for k in range(rows - 1)]
        null = len(names) if null_label is None else int(null_label)
        if not len(names) <= null < rows:  # the null row is no class's, and a row of the embedding
            raise ValueError(f"{len(names)} class names and null label {null} do not fit a class embedding "
                             f"of {rows} rows (the null label must be an id after the classes')")
        self.register_to_config(class_names=names, null_label=null)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "ClassConditionalPipeline":
        """Load an exported folder (or a Hub repo holding one) with THIS class.

        ``DiffusionPipeline.from_pretrained`` would run the ``pipeline.py``
        that ``model_index.json`` names (and so needs ``trust_remote_code``);
        this loads the two components by their diffusers class names instead,
        so no code from the folder runs. Takes ``torch_dtype`` and diffusers'
        download arguments (cache_dir, revision, token, local_files_only...)."""
        import diffusers

        hub = {k: kwargs.pop(k) for k in _HUB_ARGUMENTS if k in kwargs}
        dtype = kwargs.pop("torch_dtype", None)
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(sorted(kwargs))}")
        config = cls.load_config(pretrained_model_name_or_path, **hub)
        parts = {}
        for name in ("unet", "scheduler"):
            library, class_name = config[name]
            component = getattr(diffusers, class_name, None) if library == "diffusers" else None
            if component is None:  # only diffusers' own classes: anything else would be code from the folder
                raise ValueError(f"model_index.json names {library}.{class_name} for {name}; "
                                 "expected a diffusers class")
            extra = {"torch_dtype": dtype} if name == "unet" and dtype is not None else {}
            parts[name] = component.from_pretrained(pretrained_model_name_or_path, subfolder=name, **hub, **extra)
        pipe = cls(**parts, class_names=config.get("class_names"), null_label=config.get("null_label"))
        pipe.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipe

    @property
    def class_names(self) -> list[str]:
        """Name of each label id, in id order."""
        return list(self.config.class_names)

    def label_ids(self, class_labels) -> torch.Tensor:
        """Label ids (int64, CPU) from an id, a class name, or a sequence/tensor of them."""
        if isinstance(class_labels, torch.Tensor):
            items = class_labels.reshape(-1).tolist()
        elif isinstance(class_labels, (int, str, np.integer)):
            items = [class_labels]
        elif isinstance(class_labels, Sequence) or isinstance(class_labels, np.ndarray):
            items = list(class_labels)
        else:
            raise TypeError(f"class_labels must be label ids or class names, not {type(class_labels).__name__}")
        names = self.class_names
        ids = []
        for item in items:
            if isinstance(item, str):
                if item not in names:
                    raise ValueError(f"unknown class name {item!r}; classes: {', '.join(names)}")
                item = names.index(item)
            if isinstance(item, bool) or not isinstance(item, (int, np.integer)) or not 0 <= item < len(names):
                raise ValueError(f"class label {item!r} is not a label id 0..{len(names) - 1} "
                                 f"(the null label {self.config.null_label} is guidance's, not a class)")
            ids.append(int(item))
        if not ids:
            raise ValueError("class_labels is empty: give one label per image")
        return torch.tensor(ids, dtype=torch.long)

    @torch.no_grad()
    def __call__(self, class_labels, num_inference_steps: int = 50, guidance_scale: float = 0.0,
                 generator: torch.Generator | None = None, batch_size: int = 100, eta: float = 0.0,
                 output_type: str = "np", return_dict: bool = True):
        """One image per entry of ``class_labels`` (ids or class names), in that order.

        With the folder's scheduler, ``generator=torch.Generator().manual_seed(s)``
        and the same ``batch_size``, the pixels equal those of ``synthfed
        generate --sampler ddim --steps N --guidance w --seed s --batch-size b``
        for the same labels in the same order (generate: class 0's images,
        then class 1's...). ``guidance_scale`` is synthfed's w (module
        docstring); ``eta`` is DDIM's (0: deterministic, as generate).

        ``output_type``: "np" (float32 N×H×W×C in [0, 1]), "pt" (float32
        N×C×H×W in [0, 1]) or "pil". Every value is an 8-bit pixel / 255, so
        ``(images * 255).round().astype(np.uint8)`` gives generate's PNG pixels.
        Returns ``ImagePipelineOutput`` (a tuple when ``return_dict=False``)."""
        labels = self.label_ids(class_labels)
        self._check_arguments(num_inference_steps, guidance_scale, batch_size, output_type)
        device = self._execution_device
        pixels = torch.cat([self._sample_batch(batch.to(device), num_inference_steps, guidance_scale, eta, generator)
                            for batch in labels.split(batch_size)])
        images = _convert(pixels.cpu(), output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _check_arguments(self, steps: int, guidance_scale: float, batch_size: int, output_type: str) -> None:
        total = self.scheduler.config.num_train_timesteps
        if not 1 <= steps <= total:
            raise ValueError(f"num_inference_steps must be in [1, {total}] (the model's T), got {steps}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale is synthfed's w >= 0 (0: no guidance), got {guidance_scale}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")

    def _sample_batch(self, labels: torch.Tensor, steps: int, w: float, eta: float,
                      generator: torch.Generator | None) -> torch.Tensor:
        """uint8 pixels (N×C×H×W) of one batch; the generator carries on from the previous batch."""
        config = self.unet.config
        size = config.sample_size if isinstance(config.sample_size, int) else tuple(config.sample_size)
        size = (size, size) if isinstance(size, int) else size
        x = torch.randn((labels.shape[0], config.in_channels, *size), generator=generator, device=labels.device)
        x = x.to(self.unet.dtype)
        self.scheduler.set_timesteps(steps)
        accepted = inspect.signature(self.scheduler.step).parameters  # DDPM's step takes no eta
        extra = {k: v for k, v in (("eta", eta), ("generator", generator)) if k in accepted}
        for t in self.progress_bar(self.scheduler.timesteps):
            eps = self._eps(x, int(t), labels, w).float()
            x = self.scheduler.step(eps, t, x, **extra).prev_sample
        return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)

    def _eps(self, x: torch.Tensor, t: int, labels: torch.Tensor, w: float) -> torch.Tensor:
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        if w <= 0:  # one pass: a doubled batch could round differently from generate's
            return self.unet(x, tt, class_labels=labels).sample
        null = torch.full_like(labels, self.config.null_label)
        both = self.unet(torch.cat([x, x]), torch.cat([tt, tt]), class_labels=torch.cat([labels, null])).sample
        cond, uncond = both.chunk(2)
        return (1 + w) * cond - w * uncond


def _convert(pixels: torch.Tensor, output_type: str):
    """uint8 N×C×H×W pixels as the requested output type (values k / 255)."""
    if output_type == "pt":
        return pixels.float() / 255.0
    array = pixels.permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return array.astype(np.float32) / 255.0
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in array]
