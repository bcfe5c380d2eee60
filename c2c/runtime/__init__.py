"""The runtime: the forward passes every method shares (``passes``: extend a cache, score continuations, decode)
and where a pair gets its sharers' K/V (``sharers``: run them, or read a training example's from disk)."""
