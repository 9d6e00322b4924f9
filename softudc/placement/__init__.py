"""Placement: pure functions from hosts and requests to a Plan with reasons (no I/O here)."""

from softudc.placement.model import Group, Host, Placement, Plan, Request
from softudc.placement.place import charge, check, place, place_ffd

__all__ = ["Group", "Host", "Placement", "Plan", "Request", "charge", "check", "place", "place_ffd"]
