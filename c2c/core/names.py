"""Names the command line lists (the default pair, alignments, methods, scorings), importable without torch:
``c2c --help`` must not wait for torch and transformers."""

DEFAULT_RECEIVER = "smollm2-135m-instruct"
DEFAULT_SHARER = "gemma3-270m"

TOKEN_ALIGNMENTS = ("offsets", "offsets_ahead", "receiver_ids", "reencode_first", "reencode_longest", "identity")
RENAMED_ALIGNMENTS = {"first": "reencode_first", "longest": "reencode_longest"}
LAYER_MAPS = ("last_aligned", "spread")
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # what models load in, and translator maps are stored in

SCORINGS = ("generate", "letter", "cloze", "cloze-options", "free")  # free: a free-text answer, scored by text
FREE_MAX_NEW_TOKENS = 24  # the free scoring's default answer budget (chosen on SQuAD dev articles)
RUN_METHODS = ("receiver", "sharer", "t2t", "c2c", "c2c-shuffled", "lora-receiver")
# On items with a context that only the sharer reads (context handoff):
CONTEXT_METHODS = ("receiver-with-context", "sharer-with-context", "c2c-translated", "c2c-translated-shuffled",
                   "receiver-enriched")
# Methods computed from the records of others (no model runs): name -> the methods they combine
DERIVED_METHODS = {"ensemble": ("receiver", "sharer"), "routing": ("receiver", "sharer"),
                   "routing-oracle": ("receiver", "sharer")}
METHODS = RUN_METHODS + CONTEXT_METHODS + tuple(DERIVED_METHODS)
