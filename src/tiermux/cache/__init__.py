"""Answers paid for once: the exact cache's key (``key``)."""
