"""Engines that execute a plan: the in-process simulator (virtual clock) and the distributed backend."""
