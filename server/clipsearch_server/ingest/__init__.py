"""Ingestion on the server side: client submissions turned into queued jobs (Redis, clipsearch_core.jobqueue).
"""
