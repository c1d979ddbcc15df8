"""Emulated links: the distributed backend over kernel-shaped links in network namespaces."""
