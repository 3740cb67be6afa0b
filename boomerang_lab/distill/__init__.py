"""Distillation: the loss terms, the blockwise local stage and the `transformers.Trainer` that runs both stages."""
