"""`softudc lab`: simulated hosts as network namespaces on one or more underlay segments."""

from softudc.lab.lab import lab_down, lab_status, lab_up
from softudc.lab.state import Lab, LabError, LabSpec, load_lab

__all__ = ["Lab", "LabError", "LabSpec", "lab_down", "lab_status", "lab_up", "load_lab"]
