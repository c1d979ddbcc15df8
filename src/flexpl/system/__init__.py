"""The hardware model: device and link profiles, the topology, and calibration of this machine."""
