"""The nemesis: faults injected into a run (crash points, network faults, duplicate deliveries)."""
