"""The README's Python example runs as printed."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = [pytest.mark.integration]


def test_readme_python_example_runs(tmp_path, monkeypatch):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["better"].shape == (1000, 2)
    dist = lambda y: float((y - scope["target"]).norm(dim=1).mean())  # noqa: E731
    assert dist(scope["best"]) < dist(scope["better"]) < dist(scope["y"])
    assert (tmp_path / "my-flow" / "config.json").exists()
