"""The analyze stage: statistics, plots and word clouds of a prepared folder.

Modules: ``stage`` (``AnalyzeConfig``, ``run``, ``main``), ``plots`` (figures and report.html).
"""

from catalogtune.analyze.stage import AnalyzeConfig, AnalyzeResult, run

__all__ = ["AnalyzeConfig", "AnalyzeResult", "run"]
