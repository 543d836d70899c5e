"""Inference: batched generation with or without an adapter, and ``ask`` for one title.

Modules: ``generate`` (``Generator``), ``ask`` (``AskConfig``, ``run``, ``main``).
"""

from catalogtune.infer.ask import AskConfig, AskResult
from catalogtune.infer.generate import Generation, Generator

__all__ = ["AskConfig", "AskResult", "Generation", "Generator"]
