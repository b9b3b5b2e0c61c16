"""conv plugin for oci (placeholder until its issue lands)."""
