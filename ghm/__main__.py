"""``python -m ghm [overrides]``: the same app as ``python launch.py``, for an installed package."""

from ghm.app import main

main()
