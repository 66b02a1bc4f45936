"""Reserved token ids, shared by the model, the tokenizers and the decoders."""

PAD_ID = 0  # padding; masked everywhere
UNK_ID = 1  # out-of-vocabulary token
START_ID = 2  # first decoder input
END_ID = 3  # ends a target sequence
NUM_RESERVED = 4
