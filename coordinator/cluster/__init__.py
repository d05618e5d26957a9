"""Scale-out: sharded ingest workers, a leader, and the broker seams they stand on."""
