"""``python -m ghm.dashboard``: build (and serve) the dashboard of a sweep."""

from ghm.dashboard.build import main

main()
