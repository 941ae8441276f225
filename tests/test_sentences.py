"""The pair formats' sentence splitter: its rules on text, and the same sentences found in token ids."""

import numpy as np
import pytest

from roberta_jax.data.sentences import document_sentences, piece_bytes, sentence_starts, split_sentences


@pytest.mark.parametrize(
    "text, sentences",
    [
        ("Hello. World! Why? Yes.", ["Hello. ", "World! ", "Why? ", "Yes."]),
        # closing quotes and brackets after the terminator stay with its sentence
        ('He said "stop." Then (quietly.) left.', ['He said "stop." ', "Then (quietly.) ", "left."]),
        ("She said \u201cno.\u201d Then \u00ablater?\u00bb \u2018fine!\u2019 ok",
         ["She said \u201cno.\u201d ", "Then \u00ablater?\u00bb ", "\u2018fine!\u2019 ", "ok"]),
        ("Really?!  Yes.\tNo", ["Really?!  ", "Yes.\t", "No"]),
        # no whitespace after the dot: no boundary; a space before the dot is no terminator's whitespace
        ("Pi is 3.14 e.g.,roughly . so", ["Pi is 3.14 e.g.,roughly . ", "so"]),
        ("Mr. Smith", ["Mr. ", "Smith"]),  # no abbreviation list
        # every line break ends a sentence, with the whitespace after it
        ("line one\nline two\r\n\n  three", ["line one\n", "line two\r\n\n  ", "three"]),
        ("a.\nb", ["a.\n", "b"]),
        # never empty: leading whitespace joins the first sentence, trailing whitespace the last
        ("\n\n  Hi. There.  \n", ["\n\n  Hi. ", "There.  \n"]),
        ("no terminator at all", ["no terminator at all"]),
        ("  \n\t ", []),
        ("", []),
    ],
)
def test_splitter_rules(text, sentences):
    assert split_sentences(text) == sentences


def test_sentences_tile_the_text_and_none_is_empty():
    rng = np.random.default_rng(0)
    alphabet = list('ab .!?")]\n\r\t\u201d\u00e9')
    for _ in range(2000):
        text = "".join(rng.choice(alphabet, rng.integers(0, 30)))
        sentences = split_sentences(text)
        assert "".join(sentences) == (text if text.strip() else "")
        assert all(s.strip() for s in sentences)
        starts = sentence_starts(text.encode())
        assert np.all(np.diff(starts) > 0)


TEXTS = [
    "Hello. World!  Two spaces.\nNew line here",
    "One sentence only",
    "\u00c9mile said \u201chi.\u201d Then left. Caf\u00e9? Oui.",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n",
]


def test_token_sentences_are_the_splitter_sentences(tok):
    """Byte-level BPE puts a word's leading space in its piece, so a token sentence starts with the space the
    text sentence ends with: the same sentences up to that whitespace."""
    ids = [tok.backend.encode(t, add_special_tokens=False).ids for t in TEXTS]
    tokens = np.concatenate(ids)
    offsets = np.concatenate([[0], np.cumsum([len(i) for i in ids])])
    found = document_sentences(tokens, offsets, piece_bytes(tok))
    assert np.all(found.lengths > 0)
    for d, text in enumerate(TEXTS):
        first, last = found.doc_offsets[d], found.doc_offsets[d + 1]
        decoded = [tok.decode(tokens[a:b]) for a, b in zip(found.starts[first:last], found.ends[first:last])]
        assert "".join(decoded) == text
        assert [s.strip() for s in decoded] == [s.strip() for s in split_sentences(text)]
    assert np.diff(found.doc_offsets).tolist() == [4, 1, 4, 2]


def test_token_sentences_of_chosen_documents_and_empty_ones(tok):
    ids = [tok.backend.encode(t, add_special_tokens=False).ids for t in TEXTS]
    tokens = np.concatenate(ids)
    offsets = np.concatenate([[0], np.cumsum([len(i) for i in ids])])
    offsets = np.insert(offsets, 1, 0)  # an empty document 0
    found = document_sentences(tokens, offsets, piece_bytes(tok), doc_indices=np.array([0, 3, 4]))
    assert found.doc_offsets.tolist() == [0, 0, 4, 6]
    assert found.starts[0] == offsets[3] and found.ends[-1] == offsets[5]


def test_piece_bytes_of_byte_level_and_sentencepiece_pieces(tok):
    pieces = piece_bytes(tok)
    vocab = tok.get_vocab()
    assert pieces[vocab["\u0120the"]] == b" the" and pieces[vocab["\u010a"]] == b"\n"
    assert pieces[vocab["."]] == b"."
    from tokenizers import Tokenizer, decoders, models

    unigram = Tokenizer(models.Unigram([("<unk>", 0.0), ("\u2581the", -1.0), ("<0x0A>", -2.0), ("\u00e9", -3.0)], 0,
                                       byte_fallback=True))
    unigram.decoder = decoders.Metaspace()
    assert piece_bytes(unigram) == [b"<unk>", b" the", b"\n", "\u00e9".encode()]
    with pytest.raises(TypeError, match="holds no `tokenizers.Tokenizer`"):
        piece_bytes(lambda texts: [[0] for _ in texts])


def test_an_encoding_with_padding_leaves_the_backend_plain(tok):
    """The splitter's callers encode through `backend`: a padded, truncated call before must not leak into it."""
    plain = tok.backend.encode(TEXTS[0], add_special_tokens=False).ids
    tok(["a", TEXTS[0]], padding="max_length", truncation=True, max_length=8)
    assert tok.backend.encode(TEXTS[0], add_special_tokens=False).ids == plain
