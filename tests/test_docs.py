"""Every ``python`` code block in docs/*.md runs as it is, each in a fresh folder; so does the
README's Cerebro script, on a store like the one ``make demo`` leaves. The README's command
table names every ``btml`` command, and the README stays under 150 lines.

A block whose first line starts with ``# slow`` (it trains a model or starts TorchServe) is
marked ``slow``: ``make test`` skips it, ``make test-all`` runs it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    "data.md",
    "indices.md",
    "FEATURES.md",
    "models.md",
    "serving.md",
    "backtesting.md",
    "research.md",
    "live-trading.md",
    "cli.md",
    "dashboard.md",
    "operations.md",
]  # every block on these pages is self-contained
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SLOW = "# slow"
README = ROOT / "README.md"

# What `make demo` leaves in ./data_storage, built in seconds: the sample's AAPL, IBM and MSFT,
# the equal-weight index DEMOIDX, and a `tiny` model registered as `demo` with that index.
DEMO_STORE = """
from feeds.index import IndexConfig, build_from_store
from feeds.sample import load_sample
from feeds.store import ParquetStore
from mlmodels.dataset import DatasetConfig
from mlmodels.pipeline import train_model
from mlmodels.registry import ModelRegistry
from mlmodels.trainer import TrainConfig

store = ParquetStore("data_storage")
sample = load_sample(adjusted=True)
for symbol in ("AAPL", "IBM", "MSFT"):
    store.write(sample[symbol], merge=False)
index, _ = build_from_store(
    store, IndexConfig(name="DEMOIDX", method="equal", constituents=("AAPL", "IBM", "MSFT"))
)
frames = {s: store.read(s) for s in ("AAPL", "IBM", "MSFT")}
train_model(
    frames, "tiny", name="demo", registry=ModelRegistry("data_storage/models"),
    train_cfg=TrainConfig(epochs=1, batch_size=128, max_batches=5, threads=1),
    data_cfg=DatasetConfig(window=30), index=index.frame, index_name="DEMOIDX",
)
"""


def _blocks(path: Path) -> list[str]:
    return [m.group(1) for m in BLOCK.finditer(path.read_text())]


def _cases() -> list[object]:
    out = []
    for page in PAGES:
        for i, code in enumerate(_blocks(ROOT / "docs" / page), 1):
            marks = [pytest.mark.slow] if code.startswith(SLOW) else []
            out.append(pytest.param(page, i, code, id=f"{page}-{i}", marks=marks))
    return out


def _run(code: str, folder: Path, what: str) -> None:
    script = folder / "block.py"
    script.write_text(code)
    res = subprocess.run(
        [sys.executable, str(script)], cwd=folder, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, f"{what}:\n{res.stdout}\n{res.stderr}"


@pytest.mark.parametrize(("page", "n", "code"), _cases())
def test_doc_block_runs(page: str, n: int, code: str, tmp_path: Path) -> None:
    _run(code, tmp_path, f"docs/{page} block {n}")


def test_every_page_has_blocks() -> None:
    assert all(_blocks(ROOT / "docs" / page) for page in PAGES)
    with_code = {p.name for p in (ROOT / "docs").glob("*.md") if _blocks(p)}
    assert with_code <= set(PAGES), f"add {sorted(with_code - set(PAGES))} to PAGES"


@pytest.mark.slow
def test_readme_script_runs_on_the_demo_store(tmp_path: Path) -> None:
    (script,) = _blocks(README)
    _run(DEMO_STORE, tmp_path, "building the demo-like store")
    _run(script, tmp_path, "the README's Cerebro script")


def _commands(group: click.Group, prefix: str) -> list[str]:
    out = []
    for name, cmd in sorted(group.commands.items()):
        out.append(f"{prefix} {name}")
        if isinstance(cmd, click.Group):
            out += _commands(cmd, f"{prefix} {name}")
    return out


def test_readme_names_every_command_and_links_every_page() -> None:
    from btml.cli import main

    text = README.read_text()
    table = "\n".join(line for line in text.splitlines() if line.startswith("| `btml"))
    missing = [c for c in _commands(main, "btml") if not re.search(f"`{c}[` ]", table)]
    assert not missing, f"the README's command table lacks {missing}"
    for page in PAGES:
        assert f"(docs/{page})" in text, f"the README does not link docs/{page}"


def test_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) < 150
