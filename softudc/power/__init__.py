"""Host power: one interface (`driver.PowerDriver`) over the ways a host is switched on and off —
`lab` (a lab host's libvirtd, gatekeeper and guests) and `ipmi` (a BMC through `ipmitool`) — and
fencing, which powers a host off and confirms it before its VMs may run elsewhere.

`factory.driver_for(config)` builds a driver from a host's power config (docs/power.md).
"""
