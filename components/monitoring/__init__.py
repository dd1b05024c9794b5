"""Watching the served model: live traffic captured, reference distributions, drift without labels."""
