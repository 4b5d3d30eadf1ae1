# -*- test-case-name: tests.test_layout -*-
"""
The services stsd calls: Kubernetes (treq) and a tenant's MinIO (a keep-alive client and SigV4), each call with a deadline and verified TLS.

Upstream clients know nothing of the STS wire format stsd answers in: they
import only C{stsd.model}, L{stsd.errors} and each other.
"""
