"""Forgetting a person ([Q], docs/data_protection.md): what holds their face, and the receipt of its removal.

This package knows files and bytes only; where the stores are (DVC's cache and remote, the gallery) and in
which order they are emptied is flows/forget.py's."""
