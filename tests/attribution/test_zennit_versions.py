"""zennit 1.0.0 replaces nn.Parameter objects while attributing: the model-state suite must pass against it too.

`make install` puts zennit 1.0.0 into .venv/zennit-1.0.0 beside the pinned 0.5.1; here the whole
test_model_state.py suite runs once more in a subprocess that imports 1.0.0 first.
"""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
ZENNIT_100 = ROOT / ".venv" / "zennit-1.0.0"


def test_model_state_suite_passes_with_zennit_1_0_0():
    assert (ZENNIT_100 / "zennit").is_dir(), f"zennit 1.0.0 is missing from {ZENNIT_100}: run `make install`."
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ZENNIT_100), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["RELDROP_EXPECT_ZENNIT"] = "1.0.0"
    suite = pathlib.Path(__file__).with_name("test_model_state.py")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", str(suite)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
