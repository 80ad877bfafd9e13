"""Domain services: the rules of Parley, free of gRPC types and of SQL."""
