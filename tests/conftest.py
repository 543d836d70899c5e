"""Shared fixtures: an isolated cache, the tiny random model, the shared real sample."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "amazon_titles_sample.jsonl"
TRN_HEAD = REPO.parent / "shared" / "data" / "amazon_titles_trn_head.jsonl"


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory):
    """Point the model cache at a session temp folder (models convert once per session)."""
    home = os.environ.get("CATALOGTUNE_TEST_HOME") or str(tmp_path_factory.mktemp("ct_home"))
    old = os.environ.get("CATALOGTUNE_HOME")
    os.environ["CATALOGTUNE_HOME"] = home
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield Path(home)
    if old is None:
        os.environ.pop("CATALOGTUNE_HOME", None)
    else:
        os.environ["CATALOGTUNE_HOME"] = old


@pytest.fixture(autouse=True)
def _restore_main_module():
    """Streamlit's AppTest leaves its script as ``__main__``; spawned worker processes would re-run it."""
    main = sys.modules.get("__main__")
    yield
    if main is not None and sys.modules.get("__main__") is not main:
        sys.modules["__main__"] = main


@pytest.fixture(scope="session")
def sample_path() -> Path:
    """The 400 real records (read in place, never copied into the repo)."""
    if not SAMPLE.is_file():
        pytest.skip(f"shared sample not found at {SAMPLE}")
    return SAMPLE


@pytest.fixture(scope="session")
def trn_head_path() -> Path:
    if not TRN_HEAD.is_file():
        pytest.skip(f"shared trn head not found at {TRN_HEAD}")
    return TRN_HEAD


@pytest.fixture(scope="session")
def tiny_model_dir(_isolated_home) -> Path:
    """A 2-layer random Llama with a locally trained tokenizer."""
    from catalogtune.core import models

    return models.resolve("tiny-random")


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory, sample_path) -> Path:
    """The shared sample prepared into train/val/test.parquet."""
    from catalogtune.data.prepare import PrepareConfig, run

    out = tmp_path_factory.mktemp("prep")
    run(PrepareConfig(inputs=[sample_path], out=out))
    return out
