"""weir's chaos suite: named fault scenarios over :mod:`weir.chaos` (see ``chaos/scenarios.py``).

Run them with ``weir chaos`` (``weir chaos --list``), or as tests: ``tests/test_chaos_suite.py``.
What each one shows is written up in ``docs/resilience.md``.
"""
