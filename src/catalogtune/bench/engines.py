"""`catalogtune bench engines`: the project's Generator against CTranslate2 on the same prompts and token ids.

Both engines get the prompts ``evaluate`` builds (real catalogue titles, three other catalogue
records as references: RAG-length prompts), the same token ids, the same stop tokens and the
same batches: prompts sorted longest first, ``--batch-size`` rows per batch (CTranslate2 gets
``max_batch_size`` of the same size). The project engine decodes with ``DECODING`` (greedy,
repetition penalty 1.2, no repeated 3-gram, both on the generated tokens only). CTranslate2
gets the same greedy search, penalty and n-gram size, which is the closest it has: it has no
scope setting. With ``include_prompt_in_result=False`` it forwards the prompt up to the
*shortest* prompt of the batch at once and then walks the rest of each longer prompt through
the decoding loop, and its repetition penalty and n-gram rule see every token of that loop. So a
row that is the shortest of its batch is penalised on its output only (the project's rule); a
longer row is also penalised on its prompt's last tokens (the title and the answer cue), by an
amount that depends on its batch-mates. ``same_text_rows_shortest_in_batch`` separates the two.
The ``exact-scope`` row runs CTranslate2 one prompt per call, where the window is exactly the
output, and shows what matching the project's rule costs in speed.

Every setting also runs with the repetition rules off (pure greedy): CTranslate2 float32 against
the project engine in float32 checks that the conversion is right (the outputs agree but for
near-tied logits); int8 shows what quantisation alone changes.

The engines run batch by batch in turn (each batch on every engine before the next batch), so
on a shared machine all of them see the same load drift; CPU seconds are printed beside wall
seconds. The conversion to CTranslate2's format is done once into a cache folder and timed.
llama.cpp (llama-cpp-python) is listed as not measured unless it is importable: its package
index entry is a source distribution, built with CMake on every fresh machine and CI run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalogtune.bench import timed
from catalogtune.core import config
from catalogtune.core.util import CatalogtuneError, atomic_dir, atomic_write_json, home, require, torch_threads

LLAMA_CPP_REASON = ("not measured: llama-cpp-python has no prebuilt CPU wheel on the package index, only a "
                    "source distribution that builds llama.cpp with CMake (about 14 minutes on 2 busy cores), "
                    "which every fresh machine and CI run would pay")


@dataclass
class BenchEnginesConfig:
    """Options of `catalogtune bench engines`."""

    model: str = "smollm2-135m"
    """Base model: a registered name or a Hugging Face model folder."""
    run: Path | None = None
    """Training run folder: its adapter is merged into its base first (cached) and that model is measured."""
    prompts: int = 32
    """How many titles (RAG prompts) every engine generates for."""
    max_new_tokens: int = 64
    """Most new tokens per prompt (the same for every engine)."""
    batch_size: int = 16
    """Rows per batch, on every engine (CTranslate2's max_batch_size)."""
    threads: int = 1
    """Threads per engine (torch threads; CTranslate2 intra_threads)."""
    compute_types: list[str] = field(default_factory=lambda: ["float32", "int8"])
    """CTranslate2 weight types to convert to and measure (those the CPU supports)."""
    exact_scope: bool = True
    """Also run CTranslate2 one prompt per call (each compute type): its penalties then see the output only."""
    sample: Path | None = None
    """JSONL file with a "title" and "content" per line (default: the shared real sample)."""
    cache: Path | None = None
    """Folder for the merged model and the CTranslate2 conversions (default: CATALOGTUNE_HOME/bench-engines)."""
    out: Path | None = None
    """Also write the JSON result to this file (atomically)."""

    def __post_init__(self) -> None:
        for name in ("prompts", "max_new_tokens", "batch_size", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_new_tokens > 1024:
            raise ValueError("max_new_tokens must be <= 1024 (the generator's hard cap)")
        if not self.compute_types:
            raise ValueError("compute_types must name at least one type (float32, int8, ...)")


@dataclass
class BenchEnginesResult:
    """The figures printed as the benchmark's JSON line."""

    figures: dict[str, Any]


@dataclass
class _Setting:
    """One engine configuration measured on every batch."""

    engine: str
    compute_type: str
    decoding: str  # "project" (the project's rules, or CT2's closest), "greedy", "exact-scope"
    call: Any  # (batch of token-id lists) -> list of (generated ids, stopped)
    compare_with: str | None = None  # key of the project setting its texts are compared with
    extra: dict[str, Any] = field(default_factory=dict)
    wall: float = 0.0
    cpu: float = 0.0
    rows: dict[int, tuple[list[int], str]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.engine}/{self.compute_type}/{self.decoding}"


# --- model folders ----------------------------------------------------------------------------


def _cache_root(cfg: BenchEnginesConfig) -> Path:
    root = Path(cfg.cache) if cfg.cache is not None else home() / "bench-engines"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _fingerprint(*paths: Path) -> str:
    """A short key for a model's files: their resolved paths, sizes and modification times."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p).resolve()
        files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
        for f in files:
            st = f.stat()
            h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def model_folder(cfg: BenchEnginesConfig) -> tuple[Path, dict[str, Any]]:
    """The Hugging Face folder measured: the model itself, or the run's adapter merged into its base (cached)."""
    from catalogtune.core import models

    if cfg.run is None:
        path = Path(str(models.resolve(cfg.model)))
        if not (path / "config.json").is_file():
            raise CatalogtuneError(f"model {cfg.model} is not a local Hugging Face folder ({path}); "
                                   "give a registered name or a folder with config.json")
        return path, {}
    from catalogtune.infer.export import ExportConfig
    from catalogtune.infer.export import run as export_run

    run = Path(cfg.run)
    adapter = run / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise CatalogtuneError(f"run {run} has no adapter ({adapter}/adapter_config.json missing; train it first)")
    out = _cache_root(cfg) / f"merged-{run.resolve().name}-{_fingerprint(adapter, run / 'config.yaml')}"
    merged = out / "merged"
    if (merged / "config.json").is_file():
        return merged, {"merge_s": None, "merge_cached": True}
    t0 = time.perf_counter()
    res = export_run(ExportConfig(run=run, format="merged", out=out))  # writes under the cache, not the run
    return res.path, {"merge_s": round(time.perf_counter() - t0, 2), "merge_cached": False}


def convert(ct2: Any, model_dir: Path, compute_type: str, cache: Path) -> tuple[Path, dict[str, Any]]:
    """``model_dir`` converted to CTranslate2 with ``compute_type`` weights, once (timed; later calls reuse it)."""
    folder = cache / f"ct2-{model_dir.name}-{_fingerprint(model_dir)}-{compute_type}"
    record = folder / "catalogtune-convert.json"
    if record.is_file():
        info = json.loads(record.read_text(encoding="utf-8"))
        return folder, {"conversion_s": info.get("seconds"), "conversion_cached": True}
    t0 = time.perf_counter()
    with atomic_dir(folder) as tmp:
        try:
            ct2.converters.TransformersConverter(str(model_dir)).convert(
                str(tmp), quantization=compute_type, force=True)
        except (ValueError, NotImplementedError, RuntimeError, OSError) as exc:
            msg = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise CatalogtuneError(f"CTranslate2 cannot convert {model_dir} to {compute_type}: {msg}") from None
        _fill_special_tokens(tmp / "config.json")
        seconds = round(time.perf_counter() - t0, 2)
        (tmp / "catalogtune-convert.json").write_text(
            json.dumps({"model": str(model_dir), "quantization": compute_type, "seconds": seconds,
                        "ctranslate2": ct2.__version__}) + "\n", encoding="utf-8")
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return folder, {"conversion_s": seconds, "conversion_cached": False, "model_mb": round(size / 2**20, 1)}


def _fill_special_tokens(path: Path) -> None:
    """CTranslate2 refuses to load a model whose ``config.json`` has ``bos_token: null`` (tokenizers
    without a BOS, as tiny-random's): the end token stands in. With ``include_prompt_in_result=False``
    the BOS is never used; the prompts already carry what the chat template writes."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if cfg.get("bos_token") is None and cfg.get("eos_token"):
        cfg["bos_token"] = cfg["eos_token"]
        path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


# --- engines ----------------------------------------------------------------------------------


def _ct2_call(generator: Any, stop_ids: list[int], id_to_token: Any, max_new_tokens: int, batch_size: int,
              rules: bool) -> Any:
    from catalogtune.core.decoding import DECODING

    rep = DECODING.repetition_penalty if rules else 1.0
    ngram = DECODING.no_repeat_ngram_size if rules else 0

    def call(batch: list[list[int]]) -> list[tuple[list[int], str]]:
        res = generator.generate_batch(
            [id_to_token(ids) for ids in batch], max_batch_size=batch_size, beam_size=1, sampling_topk=1,
            repetition_penalty=rep, no_repeat_ngram_size=ngram, include_prompt_in_result=False,
            end_token=list(stop_ids), return_end_token=False, max_length=max_new_tokens)
        rows = []
        for r in res:
            ids = list(r.sequences_ids[0])
            # the end token is dropped from the result: fewer than max_new_tokens means it stopped on one
            rows.append((ids, "eos" if len(ids) < max_new_tokens else "length"))
        return rows

    return call


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def llama_cpp_row() -> dict[str, Any]:
    """llama.cpp's row: measured only where llama_cpp is importable (never built here)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return {"engine": "llama.cpp", "measured": False, "reason": LLAMA_CPP_REASON}
    return {"engine": "llama.cpp", "measured": False,
            "reason": "llama_cpp is importable here but this bench does not drive it yet (GGUF via "
                      "`catalogtune export --format gguf`)", "version": getattr(llama_cpp, "__version__", None)}


def run(cfg: BenchEnginesConfig) -> BenchEnginesResult:
    """Measure the project engine and CTranslate2 on the same prompts, batch by batch in turn."""
    ct2 = require("ctranslate2", "dev", package="ctranslate2")  # before any model is loaded
    from catalogtune.bench.generate import load_records, rag_contexts
    from catalogtune.core.decoding import DECODING
    from catalogtune.infer.generate import Generator

    supported = sorted(ct2.get_supported_compute_types("cpu"))
    unsupported = [c for c in cfg.compute_types if c not in supported]
    if unsupported:
        raise CatalogtuneError(f"CTranslate2 on this CPU cannot run {', '.join(unsupported)} "
                               f"(supported: {', '.join(supported)})")
    records = load_records(cfg.sample, int(cfg.prompts))
    mnt, bs, threads = int(cfg.max_new_tokens), int(cfg.batch_size), int(cfg.threads)
    load_before = os.getloadavg()[0]
    model_dir, merge_info = model_folder(cfg)
    cache = _cache_root(cfg)
    conversions = {ct: convert(ct2, model_dir, ct, cache) for ct in cfg.compute_types}

    with torch_threads(threads):
        gen = Generator.from_model(model_dir)
        prompts = [gen.prompt(r["title"], context=c) for r, c in zip(records, rag_contexts(records))]
        cap = gen._prompt_cap(mnt)
        ids = [gen.encode(p)[-cap:] for p in prompts]  # what Generator.generate feeds the model
        tok = gen.tok
        to_tokens = tok.convert_ids_to_tokens

        # The project engine gets the prompt texts (it encodes them to the same ids); ids -> text
        # lookups let every setting take a batch of ids.
        text_of = {tuple(i): p for i, p in zip(ids, prompts)}

        def project(rules: bool) -> Any:
            # the engines compare one forward pass per token: no title guidance (it doubles them)
            kw = DECODING.kwargs(max_new_tokens=mnt, guidance=0.0) if rules else dict(max_new_tokens=mnt)

            def call(batch: list[list[int]]) -> list[tuple[list[int], str]]:
                out = gen.generate([text_of[tuple(b)] for b in batch], batch_size=bs, **kw)
                return [(g.token_ids, g.stopped) for g in out]
            return call

        settings = [
            _Setting("catalogtune", "bfloat16-autocast" if gen.bf16 else "float32", "project", project(True)),
            _Setting("catalogtune", "bfloat16-autocast" if gen.bf16 else "float32", "greedy", project(False)),
        ]
        p_rules, p_greedy = settings[0].key, settings[1].key
        loaded = []
        for ct in cfg.compute_types:
            path, info = conversions[ct]
            t0 = time.perf_counter()
            try:
                g2 = ct2.Generator(str(path), device="cpu", compute_type=ct, intra_threads=threads, inter_threads=1)
            except (RuntimeError, ValueError) as exc:
                msg = " ".join(str(exc).split())[:200] or type(exc).__name__
                raise CatalogtuneError(f"CTranslate2 cannot load {path} ({ct}): {msg}; remove the folder "
                                       "to convert again") from None
            info = dict(info, load_s=round(time.perf_counter() - t0, 2))
            loaded.append((g2, info))
            settings.append(_Setting("ctranslate2", ct, "project", _ct2_call(g2, gen.stop_ids, to_tokens, mnt, bs, True),
                                     p_rules, info))
            settings.append(_Setting("ctranslate2", ct, "greedy", _ct2_call(g2, gen.stop_ids, to_tokens, mnt, bs, False),
                                     p_greedy, info))
        if cfg.exact_scope:
            for ct, (g2, info) in zip(cfg.compute_types, loaded):
                one = _ct2_call(g2, gen.stop_ids, to_tokens, mnt, 1, True)
                settings.append(_Setting("ctranslate2", ct, "exact-scope",
                                         lambda batch, one=one: [r for b in batch for r in one([b])], p_rules,
                                         dict(info, calls="one prompt per call")))

        # Warm every setting (allocator, oneDNN/MKL kernels, CT2 replicas) outside the timing.
        gen.generate(prompts[:2], max_new_tokens=4, batch_size=2)
        for g2, _ in loaded:
            g2.generate_batch([to_tokens(i) for i in ids[:2]], max_length=4, sampling_topk=1,
                              include_prompt_in_result=False)

        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # Generator.generate's batches
        batches = [order[s : s + bs] for s in range(0, len(order), bs)]
        shortest = set()
        for b in batches:
            low = min(len(ids[i]) for i in b)
            shortest.update(i for i in b if len(ids[i]) == low)
        for n, b in enumerate(batches):
            # rotate the start so no engine always runs first (on a warm or a cold cache)
            for s in settings[n % len(settings):] + settings[: n % len(settings)]:
                rows, w, c = timed(lambda: s.call([ids[i] for i in b]))
                s.wall, s.cpu = s.wall + w, s.cpu + c
                s.rows.update(zip(b, rows))
            print(f"bench engines: {sum(len(x) for x in batches[: n + 1])}/{len(ids)} prompts "
                  + ", ".join(f"{s.key} {s.wall:.1f}s" for s in settings), file=sys.stderr, flush=True)

        by_key = {s.key: s for s in settings}
        engines = [_row(s, by_key, gen, shortest, len(ids)) for s in settings]
        reference = by_key[p_rules]

    engines.append(llama_cpp_row())
    lengths = [len(i) for i in ids]
    ct_rows = [e for e in engines if e.get("engine") == "ctranslate2"]
    figures: dict[str, Any] = {
        "bench": "engines",
        "model": str(cfg.model) if cfg.run is None else None,
        "run": str(cfg.run) if cfg.run is not None else None,
        "model_dir": str(model_dir),
        **merge_info,
        "prompts": len(ids),
        "max_new_tokens": mnt,
        "batch_size": bs,
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "mean_prompt_tokens": round(sum(lengths) / len(lengths), 1),
        "prompt_tokens_range": [min(lengths), max(lengths)],
        "rows_shortest_in_batch": len(shortest),
        "decoding": {k: v for k, v in dataclasses.asdict(DECODING).items() if k != "max_new_tokens"},
        "ctranslate2": {"version": ct2.__version__, "supported_compute_types": supported,
                        "penalty_window": "tokens walked through the decoding loop: the output, plus each "
                                          "prompt's tokens past the shortest prompt of its batch"},
        "project_tokens_per_s": _tok_s(reference),
        "speedup_vs_project": {f"{e['compute_type']}/{e['decoding']}": e["speedup_vs_compared"] for e in ct_rows},
        "greedy_float32_same_text": next((e["same_text_as_project"] for e in engines
                                          if e.get("engine") == "ctranslate2" and e.get("compute_type") == "float32"
                                          and e.get("decoding") == "greedy"), None),
        "engines": engines,
    }
    if cfg.out is not None:
        atomic_write_json(cfg.out, figures)
    return BenchEnginesResult(figures=figures)


def _tok_s(s: _Setting) -> float:
    new = sum(len(r[0]) for r in s.rows.values())
    return round(new / s.wall, 2) if s.wall else 0.0


def _row(s: _Setting, by_key: dict[str, _Setting], gen: Any, shortest: set[int], n: int) -> dict[str, Any]:
    new = sum(len(r[0]) for r in s.rows.values())
    row: dict[str, Any] = {
        "engine": s.engine, "compute_type": s.compute_type, "decoding": s.decoding, "measured": True,
        "tokens_per_s": _tok_s(s), "seconds": round(s.wall, 2), "cpu_seconds": round(s.cpu, 2),
        "new_tokens": new, "mean_new_tokens": round(new / max(1, n), 1),
        "stopped_at_eos": sum(r[1] == "eos" for r in s.rows.values()),
    }
    ref = by_key.get(s.compare_with or "")
    if ref is not None:
        texts = {i: gen._decode(r[0]) for i, r in s.rows.items()}  # the project's text clean-up
        ref_texts = {i: gen._decode(r[0]) for i, r in ref.rows.items()}
        same = [i for i in s.rows if texts[i] == ref_texts[i]]
        prefix = [_common_prefix(s.rows[i][0], ref.rows[i][0]) for i in s.rows]
        row.update({
            "compared_with": ref.key,
            "same_text_as_project": round(len(same) / max(1, n), 3),
            "same_text_rows": len(same),
            "same_text_rows_shortest_in_batch": f"{sum(i in shortest for i in same)}/{len(shortest)}",
            "same_text_rows_other": f"{sum(i not in shortest for i in same)}/{n - len(shortest)}",
            "mean_common_prefix_tokens": round(sum(prefix) / max(1, n), 1),
            "speedup_vs_compared": round(_tok_s(s) / _tok_s(ref), 2) if _tok_s(ref) else None,
        })
    row.update(s.extra)
    return row


def main(argv: list[str]) -> int:
    """`catalogtune bench engines [--model NAME | --run RUN] [--prompts 32] [--max-new-tokens 64] [--out FILE]`."""
    from catalogtune.bench import emit

    cfg = config.parse(BenchEnginesConfig, argv, "catalogtune bench engines", __doc__.splitlines()[0])
    emit(run(cfg).figures)
    return 0
