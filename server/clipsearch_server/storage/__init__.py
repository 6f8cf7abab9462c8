"""The source of truth: store records and the `ImageStore` seam (`records`), SQLite (`sqlite`) and
PostgreSQL (`postgres`) stores, typed fields and their stored forms (`fields`). Imports no index.
"""
