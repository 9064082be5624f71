import pytest


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory):
    """A tiny synthetic VOC-layout dataset shared by the training tests."""
    from fcnseg.datasets.synth import synthesize

    root = tmp_path_factory.mktemp("voc")
    synthesize(root, num_train=8, num_val=4, size=64, seed=1, progress=False)
    return root


@pytest.fixture
def one_thread():
    """Train with one intra-op thread: on a shared 2-core runner, two spinning threads cost far more than they give."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
