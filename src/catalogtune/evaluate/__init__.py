"""The evaluate stage: base vs fine-tuned, with and without RAG, on held-out and seen records.

Modules: ``stage`` (``EvalConfig``, ``run``, ``main``), ``metrics`` (scores), ``report``
(report.json/md/html).
"""

from catalogtune.evaluate.stage import SYSTEMS, EvalConfig, EvalResult, run

__all__ = ["SYSTEMS", "EvalConfig", "EvalResult", "run"]
