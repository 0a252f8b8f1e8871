"""Spend: token usage read off answers, priced, and kept in the shared state."""
