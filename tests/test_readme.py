"""The README's Python blocks run as pasted, offline, and print what their ``# prints ...`` comments say."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_the_readme_has_python_blocks():
    assert BLOCKS, "README.md has no ```python block"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs_and_prints_what_it_claims(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = re.findall(r"#\s*prints\s+(.*)$", block, flags=re.M)
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(block, str(README), "exec"), namespace)
    assert out.getvalue().splitlines() == [e.strip() for e in expected]
    if {"defended", "classifier", "x"} <= namespace.keys():  # the defended classifier keeps a clean photo's top-1
        assert namespace["defended"](namespace["x"]).argmax(1).tolist() == namespace["classifier"](namespace["x"]).argmax(1).tolist()

