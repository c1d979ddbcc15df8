"""The hardware model: device and link profiles and the topology (``flexpl.costs.calibrate`` measures this machine)."""
