"""The CLI table and the config machinery."""

import dataclasses
import subprocess
import sys

import pytest

from catalogtune import cli

from catalogtune.core import config
from catalogtune.core.util import CatalogtuneError, atomic_dir, atomic_write_json, read_json


@dataclasses.dataclass
class Demo:
    steps: int = 10
    """How many steps."""
    lr: float = 1e-3
    """Learning rate."""
    name: str | None = None
    """Optional name."""
    targets: list[str] = dataclasses.field(default_factory=lambda: ["q", "v"])
    """Modules."""
    fast: bool = False
    """Go fast: about 30% faster."""

    def __post_init__(self):
        if self.steps <= 0:
            raise ValueError("steps must be positive")


def test_field_docs_read_from_source():
    assert config.field_docs(Demo)["lr"] == "Learning rate."


def test_build_applies_preset_then_overrides(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("steps: 5\nlr: 0.1\ntargets: [a, b, c]\n")
    cfg = config.build(Demo, p, lr="0.5", fast="true")
    assert (cfg.steps, cfg.lr, cfg.targets, cfg.fast) == (5, 0.5, ["a", "b", "c"], True)


def test_a_list_option_repeats_and_splits_on_commas():
    # a repeated --targets once silently kept only its last value
    assert config.parse(Demo, ["--targets", "a", "--targets", "b,c"], "demo").targets == ["a", "b", "c"]
    assert config.parse(Demo, ["--targets", "x"], "demo").targets == ["x"]
    assert config.parse(Demo, [], "demo").targets == ["q", "v"]


def test_unknown_key_and_bad_value_are_one_line_errors(tmp_path):
    with pytest.raises(CatalogtuneError, match="unknown config key.*stepz"):
        config.build(Demo, stepz=3)
    with pytest.raises(CatalogtuneError, match="steps"):
        config.build(Demo, steps="many")
    with pytest.raises(CatalogtuneError, match="steps must be positive"):
        config.build(Demo, steps=0)
    with pytest.raises(CatalogtuneError, match="not found"):
        config.build(Demo, tmp_path / "missing.yaml")


def test_save_roundtrip(tmp_path):
    cfg = config.build(Demo, steps=7, targets="x,y")
    config.save(cfg, tmp_path / "c.yaml")
    assert config.build(Demo, tmp_path / "c.yaml") == cfg


def test_help_prints_a_percent_sign_in_a_field_doc(capsys):
    with pytest.raises(SystemExit):
        config.parse(Demo, ["--help"], "demo", "a demo")
    out = capsys.readouterr().out
    assert "about 30% faster" in out and "option_strings" not in out


def test_cli_help_lists_commands_without_heavy_imports():
    code = "import sys; from catalogtune.cli import main; main(['--help']); print(sorted(m for m in ('torch','transformers','chromadb','streamlit') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "prepare" in out and "train" in out and out.strip().endswith("[]")


def test_unknown_command_exit_code(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_atomic_dir_gives_the_folder_mkdirs_mode(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_text("x")
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(old)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "out") == mode(tmp_path / "plain") == 0o750


def test_atomic_dir_keeps_old_on_failure(tmp_path):
    target = tmp_path / "d"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("killed")
    assert (target / "a").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
    atomic_write_json(tmp_path / "j.json", {"x": 1})
    assert read_json(tmp_path / "j.json") == {"x": 1}
