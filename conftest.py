import pytest
import torch

import pfm  # noqa: F401  before any matrix product: MKL's thread-count-independent mode (pfm.train.threads)

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PFM_DATA_DIR", str(tmp_path / "pfm-data"))


def test_device() -> torch.device:
    """The device the device tests run on: ``PFM_TEST_DEVICE`` (``cpu`` by default; ``cuda`` on a GPU machine, as
    benchmarks/gpu.sh runs them). A device that is asked for but missing fails the run rather than skipping it."""
    import os

    name = os.environ.get("PFM_TEST_DEVICE", "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"PFM_TEST_DEVICE={name} but torch sees no CUDA device")
    return dev


@pytest.fixture(scope="session")
def device() -> torch.device:
    return test_device()
