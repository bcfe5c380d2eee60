"""The context translator: its settings (``config``, no torch), the model and the reading of a context into
position-free K/V (``model``), and the closed-form fit (``fit``)."""
