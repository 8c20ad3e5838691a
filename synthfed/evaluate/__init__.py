"""Evaluation: classifiers, FID and related scores."""
