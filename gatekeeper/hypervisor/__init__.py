"""The gatekeeper's hypervisor driver: VMs through libvirt (QEMU, TCG or KVM)."""
