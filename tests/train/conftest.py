import pytest


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory):
    """A tiny synthetic VOC-layout dataset shared by the training tests."""
    from fcnseg.train.synth import synthesize

    root = tmp_path_factory.mktemp("voc")
    synthesize(root, num_train=8, num_val=4, size=64, seed=1, progress=False)
    return root
