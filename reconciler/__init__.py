"""reconciler: a declarative state reconciler for virtual machines on libvirt."""

__version__ = "0.1.0"
