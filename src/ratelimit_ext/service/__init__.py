"""gRPC adapters: Envoy's RateLimitService and Authorization, health, wiring."""
