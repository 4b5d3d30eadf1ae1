# -*- test-case-name: tests.test_layout -*-
"""
The STS port: the transport's hardening (bounded requests, deadlines, connection limits), the Klein resource answering C{POST /sts/<namespace>}, and the AWS STS wire format.

This is the only package that speaks the STS wire format to callers; nothing
under L{stsd.auth}, L{stsd.state}, L{stsd.upstream} or L{stsd.core} imports it.
"""
