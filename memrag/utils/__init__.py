"""Small shared helpers (atomic file writes, hashing, torch dtype/device parsing)."""
