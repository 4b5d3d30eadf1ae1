# -*- test-case-name: tests.test_layout -*-
"""
The logic of an exchange and its building blocks: the exchange itself, session-policy algebra under MinIO's semantics, rate limits, single flight and caches, periodic work.
"""
