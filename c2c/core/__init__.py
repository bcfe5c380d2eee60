"""The ground floor: names, validation, run files, statistics, model loading and attention geometry, every read and
write of transformers caches, rotary embeddings, token rows as tensors. Imports no other part of c2c."""
