"""conv plugin for squashfs (placeholder until its issue lands)."""
