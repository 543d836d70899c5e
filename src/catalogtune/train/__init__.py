"""The train stage: LoRA fine-tuning with checkpoints, exact resume and early stopping.

Modules: ``stage`` (``TrainConfig``, ``run``, ``main``), ``loop`` (the training loop),
``batches`` (tokenising, masking, length-grouped schedules), ``model`` (loading, LoRA, the
chunked loss), ``checkpoints`` (atomic save/load, metrics, TensorBoard), ``cpu_kernels`` and
``cpu_attention`` (the CPU speed-ups), ``unsloth`` (the optional Unsloth backend on CUDA).
"""

from catalogtune.train.stage import DEFAULT_PRESET, TrainConfig, TrainResult, load_config, read_summary, run

__all__ = ["DEFAULT_PRESET", "TrainConfig", "TrainResult", "load_config", "read_summary", "run"]
