"""The embedded model zoo: a fictitious-biographies corpus, its tokenizer and three tiny models.

* :mod:`.corpus` — the seeded TOFU-shaped corpus and :func:`load_facts` (``tt.load_facts``);
* :mod:`.tokenizer` — the byte-level BPE tokenizer trained on the corpus;
* :mod:`.train` — ``python -m tie_tracing.zoo.train <name>`` retrains a model;
* :mod:`.evaluate` — the knowledge checks reported in each ``models/<name>/MODEL_CARD.md``;
* :mod:`.card` — the card's "Edit operating point" section, rendered from ``tie_tracing.json``;
* :mod:`.cards` — ``python -m tie_tracing.zoo.cards <name>`` rewrites a card's numbers.

Shipped models (``models/``): ``tiny-mdlm``, ``tiny-ar``, ``tiny-mdlm-retain``.
"""
