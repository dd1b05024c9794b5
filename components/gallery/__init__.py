"""Enrolled people: templates per model version, their aligned crops, search, and migration between versions."""
