"""Hypervisor drivers: the seam between the reconciler and whatever runs the domains."""
