"""Checkers: pure functions from what was acknowledged and what was observed to a verdict."""
from .generic import Case, check_duplicates, check_expectations, check_final_state, check_lost, check_unique
from .result import EVIDENCE_SHOWN, CheckResult, shown

__all__ = ["EVIDENCE_SHOWN", "Case", "CheckResult", "check_duplicates", "check_expectations", "check_final_state",
           "check_lost", "check_unique", "shown"]
