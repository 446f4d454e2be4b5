"""The machinery around the model, apart from the concept files of nanohybrid/:

    data.py        corpora: the offline default (the standard library's source), local files, SmolLM-Corpus
    tokenizer.py   byte-level and Hugging Face tokenizers behind one interface
    mqar.py        multi-query associative recall batches and accuracy (Zoology)
    training.py    optimiser, schedule, checkpoints, the validation loss
    evaluate.py    zero-shot evaluation on the papers' tasks (lm-eval)
    compare.py     the apples-to-apples study of Hymba's Table 3 (train_small.py --compare)
    analysis.py    parameter and cache accounting, attention-map categories
    parity.py      the parity suite that holds every rung of the ladder to the reference
    testing.py     the relative-error comparison every test uses
"""
