"""The nemesis: faults as small reusable parts (see base.py for the shape every fault follows).

Services:  Kill, CrashPoint, HoldThenKill, Pause, Stall                    (process.py)
           BoundarySweep: a kill after each boundary of a unit of work     (boundaries.py)
Servers:   RestartServer                                             (servers.py)
Network:   Cut, OneWayCut, Delay, ResetConnections (through a proxy) (network.py)
Topics:    Duplicates                                                (duplicates.py)
Database:  HoldReads, SlowReads: a PostgreSQL tap on the proxy holds or slows the answers to the
           statements naming a key, and counts them per key              (pgwire.py)
"""
from .base import BOUNDARIES, Fault, Need, Target, fault_events, happened, why_not
from .boundaries import BoundarySweep
from .duplicates import Duplicates
from .network import Cut, Delay, OneWayCut, ResetConnections
from .process import CrashPoint, HoldThenKill, Kill, Pause, Stall
from .servers import RestartServer

__all__ = ["BOUNDARIES", "BoundarySweep", "CrashPoint", "Cut", "Delay", "Duplicates", "Fault", "HoldThenKill", "Kill", "Need", "OneWayCut",
           "Pause", "ResetConnections", "RestartServer", "Stall", "Target", "fault_events", "happened", "why_not"]
