"""The PostgreSQL backend: several server replicas on one database.

SQLite serves one process per file; PostgreSQL is for operators who run more than one. Both
backends keep the same schema (tables, columns in the same order, keys, constraints, indexes
and triggers) under the same migration numbers, so a table or an invariant documented once
holds for both, and the schema test can compare them mechanically.
"""
