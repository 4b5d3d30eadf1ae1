# -*- test-case-name: tests.test_layout -*-
"""
What operators run and read: metrics, logs, the audit trail, certificate reload, the graceful stop, C{stsd check}, the image's health check, the permissions stsd needs and the GC tuning.
"""
