"""Counter stores: in-process memory and Redis (standalone, later Cluster)."""
