"""The VNET data path as eBPF tc programs (issue 16, docs/ebpf.md)."""
