"""cmm-twin: edge gateway and digital twin for dimensional metrology."""

__version__ = "0.1.0"
