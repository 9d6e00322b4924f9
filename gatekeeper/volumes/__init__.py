"""The per-host storage service (issue 13): a pool directory of qcow2 volumes, exported over NBD
with TLS by qemu-storage-daemon, each export admitting only the hosts on its allow list."""
