"""conv plugin for ext4 (placeholder until its issue lands)."""
