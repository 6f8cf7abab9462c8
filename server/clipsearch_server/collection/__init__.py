"""One collection: write ordering (store first, then index), the search-to-store join, seal, snapshot,
compaction and catch-up: the one place that knows both the store and the index.
"""
