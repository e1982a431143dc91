"""Fault experiments (``make faults``): ``python -m tests.faults.run``."""
