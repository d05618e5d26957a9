"""byzedge: Byzantine-robust federated learning for fleets of edge devices."""

__version__ = "0.1.0"
