"""reconciler: a declarative state reconciler for virtual machines on libvirt."""

from reconciler import methodcache

__version__ = "0.1.0"

methodcache.install()  # before any module of the package makes its dataclasses
