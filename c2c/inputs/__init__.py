"""Inputs: how each model renders a prompt and which sharer token feeds each receiver position (``align``), contexts
(``context``, and ``translated_context``: one already read), the receiver's sections of a row (``sections``), and one
prepared ``Batch`` (``batch.prepare``)."""
