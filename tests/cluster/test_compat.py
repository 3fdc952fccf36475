"""The private Ray, DeepSpeed and torch names the project leans on (cogrpo/cluster/compat.py) are there, in the
versions they were written against. A version bump fails here, loudly, before anything subtler breaks: re-check each
shim against the new version, then update compat.TESTED."""

import importlib

import pytest

from cogrpo.cluster import compat


def test_installed_versions_are_the_ones_the_shims_were_written_for():
    assert compat.version_mismatches() == []


@pytest.mark.parametrize("module, name", compat.PRIVATE_NAMES)
def test_every_private_name_exists(module, name):
    target = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)


def test_the_single_machine_flag_is_set_for_the_block_and_restored():
    before = compat.ray_cluster_flag()
    with compat.ray_single_machine_flag(True):
        assert compat.ray_cluster_flag() is False
    assert compat.ray_cluster_flag() == before
