"""Searching: text/image encoding with micro-batching (`engine`, `batching`), the query planner
(`query`: filters, pages, batches, collapse) and filter evaluation against the store (`filters`).
"""
