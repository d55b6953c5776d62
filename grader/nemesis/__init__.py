"""The nemesis: faults as small reusable parts (see base.py for the shape every fault follows)."""
from .base import Fault, Need, Target, fault_events, happened, why_not

__all__ = ["Fault", "Need", "Target", "fault_events", "happened", "why_not"]
