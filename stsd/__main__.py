# -*- test-case-name: tests.test_check -*-
"""
C{python -m stsd check --config FILE}: the same as the C{stsd} command.
"""

from stsd.ops.check import main

main()
