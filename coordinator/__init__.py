"""The coordinator: ingest, anomaly scoring, reputation, rounds and robust aggregation."""
