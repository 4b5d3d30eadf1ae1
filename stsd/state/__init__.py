# -*- test-case-name: tests.test_layout -*-
"""
What stsd knows, held in memory and kept fresh in the background: PolicyBindings, Tenants and their root credentials, ServiceAccounts, and (in parent-user mode) the MinIO users derived from them.
"""
