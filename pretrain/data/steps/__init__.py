"""The per-document curation steps: each a small object with a name, a decision per document, and its
own counts per domain (`base.Step`), named in `registry` and run inside datatrove by `adapter`.

Thresholds default to the papers' (below) and every one is a constructor argument, so a
domain can have its own (number-heavy finance filings fail the alphabetic-word rule at 0.8).
- `gopher`: Gopher quality and repetition, Rae et al. 2021 (MassiveText), §A.1 and Table A1.
- `c4`: Raffel et al. 2020, §2.2 (line and document rules).
- `language`: py3langid (langid.py, Lui & Baldwin 2012), whose model ships inside the package; keep
  >= 0.65 (datatrove's default with fastText lid.176).
- `pii`: e-mail addresses, phone numbers and public IP addresses replaced by placeholders, counted.
- `thresholds`: which of these a domain may override, checked at load against the steps' arguments.
- `words`: the word split and sentence count (spaCy's) that Gopher and C4 share.
"""
