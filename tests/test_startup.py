"""Start-up (issue 51): loading and applying a saved flow does not import torch._dynamo (0.9 s of `pfm apply` on
these machines, pulled in by torch.linspace on the meta device during the saved flow's shape check)."""

import subprocess
import sys

import numpy as np
import pytest

from pfm import PreferenceDataset, PreferenceFlow


@pytest.mark.slow  # a subprocess: the fast tier leaves those to make test
def test_loading_and_applying_a_flow_imports_no_dynamo(tmp_path):
    y = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    ds = PreferenceDataset(y + 1, y)
    flow = PreferenceFlow.for_dataset(ds, hidden=16, depth=1)
    flow.fit(ds, steps=5, progress=False)
    flow.save(tmp_path / "flow")
    code = ("import sys; from pfm import PreferenceFlow; import numpy as np; "
            f"f = PreferenceFlow.load({str(tmp_path / 'flow')!r}); f.transform(np.zeros((4, 3), np.float32)); "
            "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo'))[:3])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
