# -*- test-case-name: tests.test_layout -*-
"""
Who is asking: a ServiceAccount token checked by a Kubernetes TokenReview or locally against the cluster's published keys, and the cache of recent answers.
"""
