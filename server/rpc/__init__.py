"""gRPC adapters: interceptors and one thin servicer per proto service."""
