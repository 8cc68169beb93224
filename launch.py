"""Entry point: ``python launch.py [overrides]`` trains and evaluates one run; ``-m`` sweeps (see README and :mod:`ghm.app`)."""

from ghm.app import main

if __name__ == "__main__":
    main()
