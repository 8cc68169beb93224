"""Development tools, outside the installed package: the native cluster launcher (``python -m devtools.cluster``)."""
