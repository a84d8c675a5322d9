import pytest


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """The fault tests' one synthetic dataset (train_worker.resume_config's 8 subjects), generated once a
    session; a run uses it through a `data` link in its workdir (`linked_data`)."""
    from train_worker import resume_config
    from headsup_jax.train.data import dataset_dir

    root = tmp_path_factory.mktemp("fault_data")
    dataset_dir(resume_config(), root)
    return root / "data"


@pytest.fixture
def linked_data(synthetic_data):
    """`linked_data(workdir)`: makes `workdir` with `workdir/data` linked to the shared dataset -> workdir."""
    def link(workdir):
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "data").symlink_to(synthetic_data)
        return workdir
    return link
