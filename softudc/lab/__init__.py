"""`softudc lab`: simulated hosts as network namespaces on one or more underlay segments."""

from softudc.lab.lab import Lab, LabError, LabSpec, lab_down, lab_status, lab_up, load_lab

__all__ = ["Lab", "LabError", "LabSpec", "lab_down", "lab_status", "lab_up", "load_lab"]
