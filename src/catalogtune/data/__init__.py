"""The data stage: read raw catalogue files, clean, deduplicate and split them.

Modules: ``io`` (streaming readers, ``read_split``), ``clean`` (text rules), ``records``
(per-chunk work in worker processes), ``collect`` (dedup and Parquet writers), ``prepare``
(the stage: ``PrepareConfig``, ``run``, ``clean_file``, ``main``), ``synthetic`` (benchmark
input generator).
"""
