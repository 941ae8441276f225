"""The cell codes of the arrays `explore` computes and `plots` draws.

They live apart from both so that `plots` (matplotlib only) can read them without importing
`explore` and, with it, JAX and Orbax.
"""

# `explore.document_index` values besides document numbers (0, 1, ...).
SPECIAL, PADDING = -1, -2
# `explore.mask_rows` kinds: what the masking did to each token.
NOT_CHOSEN, MASKED, RANDOM, UNCHANGED = 0, 1, 2, 3
