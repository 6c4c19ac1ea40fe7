"""The embedded models' tokenizer: a byte-level BPE trained on the tiny corpus.

Every word of the corpus (with its leading space) is one token, words never seen fall back
to byte tokens, and decoding round-trips. Special tokens ``[PAD] [BOS] [EOS] [MASK] [UNK]``
(ids 0-4); the post-processor prepends ``[BOS]`` to every encoded text (not when
``add_special_tokens=False``, which is how :func:`tie_tracing.prompting.encode_answer` encodes
answers). ``[MASK]`` is the MDLM mask id and absorbs a preceding space in text.
"""

from __future__ import annotations

from pathlib import Path

from .corpus import DATA_DIR, load_corpus

SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[MASK]", "[UNK]")
TOKENIZER_DIR = DATA_DIR / "tokenizer"


def corpus_texts(name: str = "tiny") -> list[str]:
    """Every text of the world: facts (questions, answers, paraphrases, perturbed answers),
    training prompts and probes, so every word a probe uses is one token."""
    data = load_corpus(name)
    texts = []
    for f in data["facts"]:
        texts += [f["question"], f["paraphrased_question"]]
        texts += [" " + a for a in [f["answer"], f["paraphrased_answer"], *f["perturbed_answers"]]]
    for r in data["training"] + data["probes"]:
        texts += [r["question"], " " + r["answer"]]
    return texts


def build_tokenizer(name: str = "tiny"):
    """Train the byte-level BPE on the corpus and wrap it as ``PreTrainedTokenizerFast``."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,  # never reached: merging stops when every word is one token
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_texts(name), trainer=trainer)
    tok.add_special_tokens([AddedToken("[MASK]", lstrip=True, special=True)])
    bos = tok.token_to_id("[BOS]")
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", pair="[BOS] $A $B:1", special_tokens=[("[BOS]", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        mask_token="[MASK]",
        unk_token="[UNK]",
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )


def load_tokenizer(path: str | Path = TOKENIZER_DIR):
    """The shipped tokenizer (``zoo/data/tokenizer``), as ``PreTrainedTokenizerFast``."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)


if __name__ == "__main__":
    build_tokenizer().save_pretrained(str(TOKENIZER_DIR))
    print(TOKENIZER_DIR)
