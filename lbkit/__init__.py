"""lbkit: a course and a packet-level lab for load balancing, L4 vs L7."""

__version__ = "0.1.0"
