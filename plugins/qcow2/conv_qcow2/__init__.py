"""conv plugin for qcow2 (placeholder until its issue lands)."""
