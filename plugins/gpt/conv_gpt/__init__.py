"""conv plugin for gpt (placeholder until its issue lands)."""
