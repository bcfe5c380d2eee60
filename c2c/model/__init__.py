"""The pair: ``C2CModel`` (``pair``), its config, the fusers, the fuser's files and the Hub, and the report on a
pair (``inspection``)."""
