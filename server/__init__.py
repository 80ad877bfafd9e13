"""Parley server: gRPC servicers over domain services over a SQLite store."""
