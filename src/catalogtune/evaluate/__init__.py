"""The evaluate stage: base vs fine-tuned, with and without RAG, on held-out and seen records.

Modules: ``stage`` (``EvalConfig``, ``run``, ``main``), ``metrics`` (scores), ``report``
(report.json/md/html), ``multi`` (``catalogtune compare``: several runs in one report).
"""

from catalogtune.evaluate.multi import CompareConfig, CompareResult
from catalogtune.evaluate.multi import run as compare_runs
from catalogtune.evaluate.stage import SYSTEMS, EvalConfig, EvalResult, run

__all__ = ["SYSTEMS", "EvalConfig", "EvalResult", "run", "CompareConfig", "CompareResult", "compare_runs"]
