"""Exact and near-duplicate removal over the whole corpus, with its state on disk (`workdir.WorkDir`).

- `minhash`: the one MinHash config (permutations, seed, banding set for recall) and the hasher;
- `signatures`: normalised text, shingle sets, exact hashes and Jaccard similarity;
- `arrays`: the numpy records the passes exchange (index, (hash, key) pairs, candidate pairs);
- `write`: the end of the first pass, each task's kept documents and their signatures;
- `global_dedup`: the passes after it, candidate pairs per band, verified duplicates, and the
  curated output with every exclusion.
"""
