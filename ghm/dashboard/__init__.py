"""The comparison dashboard of a sweep: one self-contained HTML page from the sweep's record and its MLflow runs.

``python -m ghm.dashboard --experiment ghm_vs_focal`` builds it for the latest sweep of an experiment.
"""
