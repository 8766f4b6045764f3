"""Shared utilities: metrics, evaluation, checkpoints, logging, device, argument parsing."""
