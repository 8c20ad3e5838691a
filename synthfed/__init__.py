"""synthfed: federated, differentially private diffusion models for shareable synthetic data."""
__version__ = "0.1.0"
