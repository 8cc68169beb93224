"""Detection datasets in COCO format: a validated loader, the built-in Digits-Det generator, and the lock
that lets one process make a cached input while the others wait.

A dataset is a function returning :class:`~ghm.data.coco.DetectionData` (train and val
:class:`~ghm.data.coco.CocoDetection` splits and an id for tracking), named by ``_target_`` in a
file of ``conf/data/``.
"""
