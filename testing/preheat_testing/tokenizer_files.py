"""A byte-level BPE tokenizer of an exact vocabulary size, loadable by `tokenizers`/transformers."""

from __future__ import annotations

from preheat_testing.model_files import json_bytes

UNK, BOS, EOS = 0, 1, 2
_SPECIALS = ("<unk>", "<s>", "</s>")
# plain words given their own tokens, so short prompts tokenize readably
_WORDS = (
    "the a an is of and to in on it that was for with as by at from hello world "
    "user assistant system yes no one two three four five"
)


def _byte_alphabet() -> list[str]:
    """The 256 byte-level characters (GPT-2 mapping), most useful first."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    char = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in char:
            char[b] = chr(256 + extra)
            extra += 1
    order = [ord(" "), *range(ord("a"), ord("z") + 1), *range(ord("0"), ord("9") + 1)]
    order += [b for b in range(256) if b not in order]
    return [char[b] for b in order]


def _bpe_vocab(n: int) -> tuple[list[str], list[str]]:
    """`n` byte-level BPE tokens (specials first) and the merges that build them."""
    tokens = dict.fromkeys([*_SPECIALS, *_byte_alphabet()[: max(0, n - len(_SPECIALS))]])
    merges: list[str] = []

    def add(left: str, right: str) -> None:
        if len(tokens) < n and left in tokens and right in tokens and left + right not in tokens:
            tokens[left + right] = None
            merges.append(f"{left} {right}")

    for word in _WORDS.split():
        piece = "\u0120"
        for ch in word:
            add(piece, ch)
            piece += ch
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    syllables = [c + v for c in consonants for v in vowels]
    for syl in syllables:
        add(syl[0], syl[1])
    prefixes = ["\u0120"]
    while len(tokens) < n and prefixes:
        grown = []
        for prefix in prefixes:
            for syl in syllables:
                add(prefix, syl)
                grown.append(prefix + syl)
        prefixes = grown
    return list(tokens), merges


def tokenizer_files(vocab: int, model_max_length: int) -> dict[str, bytes]:
    """A byte-level BPE tokenizer with exactly `vocab` tokens, loadable by `tokenizers`/transformers.

    Below 259 tokens not every byte has a token and unknown characters are dropped.
    """
    if vocab < len(_SPECIALS) + 1:
        raise ValueError("vocab must hold the special tokens and at least one byte")
    tokens, merges = _bpe_vocab(vocab)
    added = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, tok in enumerate(_SPECIALS)
    ]
    bos = {"SpecialToken": {"id": "<s>", "type_id": 0}}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": True,
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                bos,
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [BOS], "tokens": ["<s>"]}},
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "merges": merges,
        },
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added
        },
        "chat_template": (
            "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}assistant {% endif %}"
        ),
    }
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}
    return {
        "tokenizer.json": json_bytes(tokenizer, indent=None),
        "tokenizer_config.json": json_bytes(config),
        "special_tokens_map.json": json_bytes(special),
    }
