"""Training data for the LoRA loop: read splits, tokenise (prompt, completion), plan batches.

Every example is ``(ids, n_prompt)``: the prompt tokens followed by the description tokens
(with the end token). Loss is taken only on the description: the hidden state at position
``p`` predicts token ``p + 1`` for ``p`` in ``[n_prompt - 1, len - 2]``. An example may carry a
third item, the positions of description tokens that carry no loss (``mask_unsupported``).

Batches are *length-grouped* (examples of similar length share a batch) and right-padded.
Right padding needs no attention mask under a causal model: a real token only attends to
earlier positions, which are all real, so the fast ``is_causal`` attention path stays on and
the padded positions are never selected for the loss or the output layer.

The batch plan is a pure function of (seed, epoch, data), so a resumed run sees exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from catalogtune.core.util import CatalogtuneError

Example = tuple  # (ids: list[int], n_prompt: int) or (ids, n_prompt, no_loss: tuple[int, ...])
"""(token ids, number of prompt tokens[, positions of description tokens that carry no loss])."""

GROUP_BATCHES = 32
"""Length-sort inside windows of this many batches: little padding, still shuffled."""


def read_split(data: Path, split: str, limit: int | None = None) -> list[dict]:
    """Records of ``DATA/split.parquet`` (via ``catalogtune.data.io`` when it is installed).

    A missing or empty split, or one without ``title``/``content`` columns, is a one-line error.
    """
    try:
        from catalogtune.data.io import read_split as _read  # the data stage's reader
    except ImportError:
        _read = None
    if _read is not None:
        rows = _read(data, split, limit=limit)
    else:
        rows = _read_parquet(Path(data), split, limit)
    if not rows:
        raise CatalogtuneError(f"the {split} split in {data} is empty")
    missing = {"title", "content"} - set(rows[0])
    if missing:
        raise CatalogtuneError(f"the {split} split in {data} lacks column(s): {', '.join(sorted(missing))}")
    return rows


def _read_parquet(data: Path, split: str, limit: int | None) -> list[dict]:
    import pyarrow.parquet as pq

    path = data / f"{split}.parquet"
    if not data.is_dir():
        raise CatalogtuneError(f"data folder not found: {data}")
    if not path.is_file():
        raise CatalogtuneError(f"the {split} split is missing: {path} (run `catalogtune prepare` first)")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for broken files
        raise CatalogtuneError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    rows = table.slice(0, limit).to_pylist() if limit else table.to_pylist()
    return rows


@dataclass
class Tokenized:
    """Examples ready for batching, and how many records were skipped and why."""

    examples: list[Example]
    skipped: dict[str, int]
    truncated: int
    sources: list[int] = field(default_factory=list)
    """For each example, the index of its record in the input."""
    kinds: dict[str, int] = field(default_factory=dict)
    """Examples per prompt kind (all "product" unless ``kind_prompts``)."""


def tokenize(records: Sequence[dict], tok: Any, max_length: int, mask_unsupported: bool = False,
             mask_scope: str = "all", kind_prompts: bool = False) -> Tokenized:
    """Turn records into (ids, n_prompt); long descriptions are cut to ``max_length`` tokens.

    Records with an empty title or description, or a prompt that leaves no room for the
    description, are skipped and counted (never a crash). With ``mask_unsupported`` each example
    also lists the description tokens inside a claim its prompt does not hold (a name or
    number in neither the title nor the record's references, ``core.claims``): they get no
    loss, so the model is not taught to state facts it cannot know (token-level loss
    truncation, as in Goyal and Durrett, 2021), while the text around them still trains it.
    ``mask_scope="plain"`` masks only examples without references: retrieval-aware examples keep
    their whole loss. With ``kind_prompts`` each description's kind (``data.kinds.content_kind``)
    picks its prompt's instruction (``core.prompt.KIND_INSTRUCTIONS``): review quotes, author
    biographies and publisher boilerplate train under their own instruction, product descriptions
    under the one inference uses; ``Tokenized.kinds`` counts them.
    """
    from catalogtune.core.prompt import build_prompt, completion_text

    if kind_prompts:
        from catalogtune.data.kinds import content_kind
    kind_of: list[str] = []
    kinds: dict[str, int] = {}

    skipped: dict[str, int] = {}
    prompts: list[str] = []
    completions: list[str] = []
    kept: list[int] = []
    for i, rec in enumerate(records):
        title, content = rec.get("title"), rec.get("content")
        if not isinstance(content, str) or not content.strip():
            skipped["empty_content"] = skipped.get("empty_content", 0) + 1
            continue
        try:
            # retrieval-aware examples carry their references (train.retrieval): the inference layout
            kind = content_kind(content) if kind_prompts else "product"
            prompts.append(build_prompt(tok, title if isinstance(title, str) else "", context=rec.get("context"),
                                        kind=kind))
        except CatalogtuneError:
            skipped["bad_title"] = skipped.get("bad_title", 0) + 1
            continue
        # Descriptions run to 197k characters; tokenise only what can fit (>= 1 token per 16
        # characters is far more than max_length). A cut text gets no end token: it goes on.
        limit = max_length * 16
        text = content.strip()
        completions.append(text[:limit] if len(text) > limit else completion_text(tok, text))
        kept.append(i)
        kind_of.append(kind)
    examples: list[Example] = []
    sources: list[int] = []
    truncated = 0
    if not prompts:
        return Tokenized(examples, skipped, truncated)
    # Whole lists at once: fast tokenizers then work in parallel (Rust), not record by record.
    # The chat template already holds any BOS token, so add none here.
    all_p = tok(prompts, add_special_tokens=False)["input_ids"]
    enc = tok(completions, add_special_tokens=False, return_offsets_mapping=mask_unsupported)
    all_c = enc["input_ids"]
    masks: list[tuple[int, ...]] = (
        _unsupported_tokens(records, kept, completions, enc["offset_mapping"], plain_only=mask_scope == "plain")
        if mask_unsupported else [()] * len(kept)
    )
    for src, p_ids, c_ids, no_loss, kind in zip(kept, all_p, all_c, masks, kind_of):
        room = max_length - len(p_ids)
        if room < 2:
            skipped["prompt_too_long"] = skipped.get("prompt_too_long", 0) + 1
            continue
        if len(c_ids) > room:
            truncated += 1
            c_ids = c_ids[:room]
        ids = list(p_ids) + list(c_ids)
        if mask_unsupported:
            examples.append((ids, len(p_ids), tuple(len(p_ids) + j for j in no_loss if j < len(c_ids))))
        else:
            examples.append((ids, len(p_ids)))
        sources.append(src)
        kinds[kind] = kinds.get(kind, 0) + 1
    return Tokenized(examples, skipped, truncated, sources, kinds)


def _unsupported_tokens(records: Sequence[dict], kept: Sequence[int], completions: Sequence[str],
                        offsets: Sequence[Sequence[tuple[int, int]]], plain_only: bool = False) -> list[tuple[int, ...]]:
    """For each completion, the indices of its tokens that overlap an unsupported claim
    (none for an example with references when ``plain_only``)."""
    from catalogtune.core.claims import unsupported_spans

    out: list[tuple[int, ...]] = []
    for src, text, offs in zip(kept, completions, offsets):
        rec = records[src]
        if plain_only and rec.get("context"):
            out.append(())
            continue
        refs = [str(c.get("content") or "") for c in rec.get("context") or ()]
        spans = unsupported_spans(text, str(rec.get("title") or ""), refs)
        # the last token (the end token, or the last piece of a cut text) always keeps its loss
        out.append(tuple(j for j, (a, b) in enumerate(offs[:-1]) if b > a and any(a < e and s < b for s, e in spans)))
    return out


def no_loss(ex: Example) -> tuple[int, ...]:
    """Positions of an example's description tokens that carry no loss."""
    return ex[2] if len(ex) > 2 else ()


def useful_tokens(ex: Example) -> int:
    """Tokens of an example that carry loss (the description, end token included)."""
    return len(ex[0]) - ex[1] - len(no_loss(ex))


def plan_epoch(examples: Sequence[Example], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-grouped batches of example indices for one epoch, in a seeded random order."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    # windows of about GROUP_BATCHES batches, all about the same size: a short last window
    # would group its few examples poorly (on the 315-record sample, 18 % padding in its
    # batches). Every window but the last holds whole batches: ceil(n / batch_size) in all.
    n_windows = max(1, round(len(order) / (batch_size * GROUP_BATCHES)))
    bounds = [batch_size * round(len(order) * i / n_windows / batch_size) for i in range(n_windows)] + [len(order)]
    batches: list[list[int]] = []
    for start, end in zip(bounds, bounds[1:]):
        chunk = sorted(order[start:end], key=lambda i: len(examples[i][0]))
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass(frozen=True)
class Schedule:
    """How optimizer steps map onto micro-batches for one process of ``world``."""

    batch_size: int
    grad_accum: int
    seed: int
    world: int
    rank: int
    n_batches: int
    _plans: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def micro_per_rank(self) -> int:
        """Micro-batches each process runs per epoch (equal on all ranks)."""
        return self.n_batches // self.world

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (the last one may use fewer micro-batches)."""
        return -(-self.micro_per_rank // self.grad_accum)

    def step_batches(self, examples: Sequence[Example], step: int) -> list[list[int]]:
        """The micro-batches (example indices) this rank runs for optimizer ``step`` (0-based)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch not in self._plans:  # one plan per epoch, not per step (big data sorts slowly)
            self._plans.clear()
            self._plans[epoch] = plan_epoch(examples, self.batch_size, self.seed, epoch)
        plan = self._plans[epoch]
        mine = plan[self.rank::self.world][: self.micro_per_rank]
        return mine[k * self.grad_accum:(k + 1) * self.grad_accum]


def make_schedule(n_examples: int, batch_size: int, grad_accum: int, seed: int,
                  world: int = 1, rank: int = 0) -> Schedule:
    """A schedule; too few examples for one micro-batch per process is a one-line error."""
    n_batches = -(-n_examples // batch_size)
    if n_batches < world:
        raise CatalogtuneError(
            f"{n_examples} training examples make {n_batches} batch(es) of {batch_size}: "
            f"fewer than the {world} processes"
        )
    return Schedule(batch_size, grad_accum, seed, world, rank, n_batches)


def collate(examples: Sequence[Example], idxs: Sequence[int], pad_id: int) -> dict[str, Any]:
    """Right-padded ``input_ids`` (B, T) plus the flat rows that carry loss and their targets.

    ``loss_rows`` index the (B*T) hidden states; ``loss_targets`` are the next tokens there.
    """
    import torch

    batch = [examples[i] for i in idxs]
    width = max(len(ex[0]) for ex in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    rows: list[int] = []
    targets: list[int] = []
    for b, ex in enumerate(batch):
        ids, n_prompt, skip = ex[0], ex[1], set(no_loss(ex))
        input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        keep = [p for p in range(n_prompt, len(ids)) if p not in skip]
        rows += [b * width + p - 1 for p in keep]
        targets += [ids[p] for p in keep]
    return {
        "input_ids": input_ids,
        "loss_rows": torch.tensor(rows, dtype=torch.long),
        "loss_targets": torch.tensor(targets, dtype=torch.long),
        "n_tokens": sum(len(ex[0]) for ex in batch),
        "n_useful": len(targets),
    }


def eval_batches(examples: Sequence[Example], batch_size: int) -> list[list[int]]:
    """Length-sorted batches covering every example once (validation: order does not matter)."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    return [order[j:j + batch_size] for j in range(0, len(order), batch_size)]
