import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_env.py"


@pytest.mark.slow
def test_custom_env_example_runs_end_to_end():
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--steps", "2048"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "success after both variants: right" in proc.stdout
