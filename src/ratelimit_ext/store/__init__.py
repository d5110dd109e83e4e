"""Counter stores: in-process memory, Redis and Redis Cluster."""
