"""Every ``python`` code block in docs/*.md runs as it is, each in a fresh folder."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["data.md", "indices.md", "FEATURES.md"]  # every block on these pages is self-contained
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks() -> list[tuple[str, int, str]]:
    out = []
    for page in PAGES:
        for i, m in enumerate(BLOCK.finditer((ROOT / "docs" / page).read_text())):
            out.append((page, i + 1, m.group(1)))
    return out


@pytest.mark.parametrize(("page", "n", "code"), _blocks(), ids=lambda v: str(v)[:20])
def test_doc_block_runs(page: str, n: int, code: str, tmp_path: Path) -> None:
    script = tmp_path / "block.py"
    script.write_text(code)
    res = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, f"docs/{page} block {n}:\n{res.stdout}\n{res.stderr}"


def test_every_page_has_blocks() -> None:
    assert {p for p, _, _ in _blocks()} == set(PAGES)
