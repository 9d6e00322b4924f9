"""etcd for the manager's shared store (issue 11): a client of etcd 3.4's v3 JSON gateway and a
cluster of local etcd processes for tests, the lab and benchmarks."""

from softudc.etcd.client import KV, EtcdClient, EtcdCompacted, EtcdError

__all__ = ["KV", "EtcdClient", "EtcdCompacted", "EtcdError"]
