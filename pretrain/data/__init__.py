"""The data pipeline: sources -> curation -> tokenizer -> mix + pack -> token shards for training.

Read it in this order (each module one job; imports only go down this list, never back up):
    documents       sources (jsonl, parquet, text, datasets on disk) read as documents
    config          the typed config (`configs/data-sample.yaml`) and its validation
    workdir         the one owner of the folder layout under `out_dir`, and the recorded settings
    chunks          the input cut into chunks that tasks share out, each document with its key
    steps/          the per-document steps (Gopher, C4, language, PII), their registry and adapter
    dedup/          exact + MinHash dedup: the one MinHash config, signatures, the global passes
    report          the funnel merged over tasks, rendered, logged to MLflow
    passes          the five curation passes, each a datatrove pipeline of the steps above
    executors       where the passes run: datatrove's local, Slurm or Ray executor (`curate`)
    tokenizer       the tokenizer stage
    shards          packed token shards and the training loader
    objectives      the masked LM's and T5 span corruption's inputs over packed rows (torch)
    mix             the mix + pack stage (domain weights, epochs, train/eval split)
    pipeline        the command line (`pretrain-data`, `python -m pretrain.data.pipeline`)
and beside them `synthetic` (Markov-chain shards) and `sample_corpus` (the shipped sample).
"""
