"""Training: recipes (``recipe``), objectives, distributed steps, a run's resumable state (``state``), the training
loop (``train``) and the translator-fitting run (``fit_translators``)."""
