"""What runs inside each lab host, by role."""
