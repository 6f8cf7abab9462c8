"""A server following a shared PostgreSQL store into its local SQLite mirror (`follower.StoreFollower`).
"""
