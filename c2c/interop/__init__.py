"""Interoperation: converting the reference implementation's checkpoints (``reference``)."""
