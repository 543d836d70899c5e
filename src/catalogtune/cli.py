"""The command-line interface: a table from command names to stage modules.

Each stage module exposes ``main(argv: list[str]) -> int`` that parses its own options and
calls the stage's ``run(cfg)``. Modules are imported only when their command runs, so
``catalogtune --help`` stays fast (no torch, transformers, chromadb or streamlit import).
"""

from __future__ import annotations

import importlib
import sys

from catalogtune.core.util import CatalogtuneError, write_failure

COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("catalogtune.data.prepare", "clean, deduplicate and split raw catalogue records"),
    "analyze": ("catalogtune.analyze.stage", "exploratory analysis: stats, plots, word clouds, report.html"),
    "models": ("catalogtune.core.models", "list registered base models or convert one to the cache"),
    "train": ("catalogtune.train.stage", "LoRA fine-tuning with checkpoints, resume and early stopping"),
    "tune": ("catalogtune.train.tune", "hyper-parameter search over the training recipe (Optuna, resumable)"),
    "index": ("catalogtune.rag.index", "build the ChromaDB reference index of the training split"),
    "ask": ("catalogtune.infer.ask", "generate a description for a title, with its references"),
    "describe": ("catalogtune.infer.describe", "describe catalogue products in resumable chunks (Ray Data or vLLM to scale out)"),
    "export": ("catalogtune.infer.export", "export a run as merged safetensors, GGUF or an Ollama Modelfile"),
    "serve": ("catalogtune.infer.serve", "OpenAI-compatible HTTP server for the base and fine-tuned model"),
    "evaluate": ("catalogtune.evaluate.stage", "before/after and fine-tuning vs RAG evaluation"),
    "compare": ("catalogtune.evaluate.multi", "several runs (and base models) on the same records, one report"),
    "demo": ("catalogtune.demo", "run the whole pipeline on real data and summarise it"),
    "app": ("catalogtune.app", "start the Streamlit app (127.0.0.1 by default)"),
    "bench": ("catalogtune.bench", "benchmarks: prepare, train, generate, retrieve"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: catalogtune COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'catalogtune COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` to a stage module; user errors print one line and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from catalogtune import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"catalogtune: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    except CatalogtuneError as exc:
        print(f"catalogtune {name}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"catalogtune {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # A full or read-only disk reaches here from any writer (a library's own error type,
        # torch's RuntimeError around a short write): one line naming the path, not a traceback.
        err = write_failure(exc, _out_arg(rest))
        if err is None:
            raise
        print(f"catalogtune {name}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _out_arg(argv: list[str]) -> str | None:
    """The command's ``--out`` value: where it writes, named when an error carries no path."""
    for i, arg in enumerate(argv):
        if arg == "--out" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--out="):
            return arg.split("=", 1)[1]
    return None
