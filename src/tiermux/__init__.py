"""tiermux: a cost-optimising edge proxy for LLM traffic."""

__version__ = "0.1.0"
