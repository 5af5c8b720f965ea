"""The README's training-loop examples run as written on the sample store.

The python blocks of the README section on the training feed are joined into one script and
run in a new process from a folder that contains ``cubes/sample.zarr`` and the sample
manifest, as a user would run them after ``sensorcube run sample``.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

FEED_BLOCK_NAMES = ("ChipPairs(", "ChipPairLoader(", "ChipPairDataset(")


def feed_blocks() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    chosen = [block for block in blocks if any(name in block for name in FEED_BLOCK_NAMES)]
    return [block for block in chosen if "evaluate" not in block]


def test_readme_has_feed_blocks() -> None:
    blocks = feed_blocks()
    assert len(blocks) == 3
    assert "ChipPairLoader(" in blocks[1]


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="torch is not installed; install sensorcube[torch] to run the PyTorch feed tests",
)
def test_readme_feed_blocks_run(sample_run: Path, tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    body = "\n".join(feed_blocks())
    indented = "\n".join(f"    {line}" if line else "" for line in body.splitlines())
    script.write_text(f'if __name__ == "__main__":\n{indented}\n    print("trained")\n')
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=sample_run,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("trained")
