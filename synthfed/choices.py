"""The named choices of the settings and commands, in one torch-free place.

The CLI lists them at start-up (``click.Choice``), ``TrainConfig.validate``
checks them, and the modules that implement them import them from here."""

STRATEGIES = ("fedavg", "centralized", "local", "fedper", "fedrep", "pfdm")
# Strategies whose clients keep a model part of their own: one model per client.
PERSONALIZED_STRATEGIES = ("local", "fedper", "fedrep", "pfdm")
PARTITIONS = ("dirichlet", "iid", "folders")
PRECISIONS = ("fp32", "bf16")
WARM_STARTS = ("none", "central")
DEVICES = ("auto", "cpu", "cuda")
SAMPLERS = ("ddpm", "ddim")
DDPM_VARIANCES = ("fixed_small", "fixed_large")  # sigma^2 = beta-tilde (posterior) or beta
LAYOUTS = ("flat", "class-folders")  # of a generated dataset's images/ (synthfed.dataset_folder)
