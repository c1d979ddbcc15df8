"""FlexPL: flexible parallel learning across devices, edge servers and the cloud.

Plans mix data parallelism (federated learning) and model parallelism (one model cut
across nodes); every run reports FLOPs, bytes per link, virtual time and energy.
"""

__version__ = "0.1.0"
