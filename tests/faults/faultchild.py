"""The fault tests' child process: ``python faultchild.py COMMAND ARGS...`` runs ``catalogtune``.

Faults are armed through the environment, so the command line stays the CLI's own:

- ``CT_FAULT_KILL_AT="module:attr:N"``: SIGKILL this process right after the N-th call of
  ``module.attr`` returns (e.g. ``safetensors.torch:save_file:2``: inside a checkpoint save,
  one file written and the folder not yet swapped in); ``...:N:before`` kills before the call.
- ``CT_FAULT_FAKE_EVAL=SECONDS``: ``evaluate`` uses a deterministic fake generator that sleeps
  SECONDS per batch (no model load), like tests/evaluate's.
- ``CT_FAULT_WORKERS=1``: ``prepare`` uses its worker processes even for a small input.
- ``CT_FAULT_SLOW_AT="module:attr:SECONDS"``: sleep SECONDS before each call of ``module.attr``
  (holds a lock long enough for a second process to meet it, however fast the machine).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from types import SimpleNamespace


def _target(mod_name: str, attr: str) -> tuple[object, str]:
    """(the object holding ``attr``, its last name): "ParquetWriter.write_table" is a method."""
    owner = importlib.import_module(mod_name)
    *path, attr = attr.split(".")
    for name in path:
        owner = getattr(owner, name)
    return owner, attr


def arm_kill(spec: str) -> None:
    """Wrap ``module.attr`` so that its N-th call ends this process with SIGKILL."""
    parts = spec.split(":")
    n, before = int(parts[2]), len(parts) > 3 and parts[3] == "before"
    owner, attr = _target(parts[0], parts[1])
    real = getattr(owner, attr)
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n and before:
            os.kill(os.getpid(), signal.SIGKILL)
        out = real(*args, **kwargs)
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(owner, attr, wrapper)


def arm_slow(spec: str) -> None:
    """Wrap ``module.attr`` so that each call starts SECONDS late."""
    mod_name, attr, seconds = spec.split(":")
    owner, attr = _target(mod_name, attr)
    real = getattr(owner, attr)

    def wrapper(*args, **kwargs):
        time.sleep(float(seconds))
        return real(*args, **kwargs)

    setattr(owner, attr, wrapper)


class FakeGenerator:
    """Deterministic stand-in for ``infer.Generator``: outputs derive from the prompt only."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def prompt(self, title, context=None):
        ctx = " | ".join(r["title"] for r in context or [])
        return f"T: {title}\nC: {ctx}\n"

    def generate(self, prompts, max_new_tokens=16, use_adapter=True, **_):
        time.sleep(self.delay)
        out = []
        for p in prompts:
            title = p.split("\n")[0][3:]
            text = f"{title} made by Acme in 7 sizes." if use_adapter else "A great product for you."
            out.append(SimpleNamespace(text=text, new_tokens=len(text.split()), seconds=0.01, stopped_at_eos=True))
        return out

    def score(self, prompts, completions, use_adapter=True, batch_size=8):
        return [(len(c) * (0.5 if use_adapter else 1.0), len(c)) for c in completions]


def main() -> int:
    if os.environ.get("CT_FAULT_WORKERS"):
        from catalogtune.data import prepare

        prepare.SMALL_INPUT_BYTES = 0
    if os.environ.get("CT_FAULT_FAKE_EVAL"):
        from catalogtune.evaluate import stage

        gen = FakeGenerator(float(os.environ["CT_FAULT_FAKE_EVAL"]))
        stage._open_generator = lambda cfg: (gen, "fake-model", "fake-adapter" if cfg.run is not None else None)
    if os.environ.get("CT_FAULT_SLOW_AT"):
        arm_slow(os.environ["CT_FAULT_SLOW_AT"])
    if os.environ.get("CT_FAULT_KILL_AT"):
        arm_kill(os.environ["CT_FAULT_KILL_AT"])
    from catalogtune import cli

    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
