"""Evaluation: ``c2c eval`` (``evaluate``), the methods' scorers (``scorers``), free-text answers and summaries."""
