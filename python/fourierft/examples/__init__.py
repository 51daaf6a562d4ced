"""Runnable examples: ``python -m fourierft.examples.finetune`` (console script ``fourierft-finetune``)."""
