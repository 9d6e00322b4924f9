import pytest

from softudc.placement.cluster import BHost, BVm, Cluster


def test_use_falls_back_to_allocation() -> None:
    assert BVm("a", "h", 2, 2048).cpu == 2.0
    assert BVm("a", "h", 2, 2048, cpu_use=0.5, mem_use_mib=100).mem == 100.0


def test_validate_names_the_vm_and_host() -> None:
    c = Cluster([BHost("h1", 4, 4096)], [BVm("a", "h9", 1, 512)])
    with pytest.raises(ValueError, match="vm a: host 'h9'"):
        c.validate()


def test_bad_state_is_refused() -> None:
    with pytest.raises(ValueError, match="state 'gone'"):
        BHost("h1", 4, 4096, "gone")


def test_fingerprint_changes_with_placement_not_with_use() -> None:
    c = Cluster([BHost("h1", 4, 4096), BHost("h2", 4, 4096)], [BVm("a", "h1", 1, 512, cpu_use=0.1)])
    same = Cluster(list(c.hosts), [BVm("a", "h1", 1, 512, cpu_use=0.9)])
    assert c.fingerprint() == same.fingerprint()
    assert c.moved({"a": "h2"}).fingerprint() != c.fingerprint()
    assert c.moved({"a": "h2"}, now=5.0).vms[0].moved_at == 5.0
