"""ratelimit-ext: rate limiting and authorization for Envoy over gRPC."""

__version__ = "0.1.0"
