import os

import pytest


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import torch

        # reference models in the test process: one thread avoids OpenMP oversubscription on small CIs
        torch.set_num_threads(1)
    except ImportError:
        pass
    yield
