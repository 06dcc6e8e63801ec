"""Real text without a download: a corpus built from what this machine has installed.

Four kinds of document, each read in sorted path order so the corpus is the same on every run:

- `man`: manual pages (`/usr/share/man`, English and translated), their roff markup stripped to text;
- `doc`: package documentation under `/usr/share/doc` (READMEs, NEWS, changelogs, copyright files);
- `licence`: the licences in `/usr/share/common-licenses`;
- `docstring`: docstrings of 50 words or more in the standard library and the installed packages.

`write_corpus` writes one JSON-lines file per kind (`{"id", "text"}`), up to a byte budget per kind.
Used by the real-text benchmarks (curation speed, dedup recall) and the demo; none of it is shipped.
"""

from __future__ import annotations

import ast
import gzip
import json
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

KINDS = ("man", "doc", "licence", "docstring")
MIN_DOCSTRING_WORDS = 50

# roff requests that carry no text (layout, definitions, conditionals); any other request keeps its arguments
_SILENT_REQUESTS = frozenset(
    ["ad", "bp", "br", "ce", "de", "ds", "el", "fi", "ft", "hy", "ie", "if", "ig", "in", "ll", "na", "ne", "nf", "nh", "nr", "ns", "pd", "pl", "ps", "rm", "rr", "so", "sp", "ta", "ti", "tr", "vs", "TH", "Dd", "Dt", "Os", "PD", "UC", "RS", "RE", "TS", "TE", "EQ", "EN", "IX"])
_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)")
_SIZE = re.compile(r"\\s[+-]?(\d|\[[^\]]*\]|\(..)")
_MOTION = re.compile(r"\\[wmhvlLbDNoZxXk]('[^']*'|\[[^\]]*\]|\(..|.)")
_NAMED = re.compile(r"\\(\(..|\[[^\]]*\]|\*\(..|\*\[[^\]]*\]|\*.)")
_GLYPHS = {"\\(em": "—", "\\(en": "–", "\\(bu": "•", "\\(aq": "'", "\\(dq": '"', "\\(lq": "“", "\\(rq": "”",
           "\\(co": "©", "\\(oq": "‘", "\\(cq": "’", "\\(hy": "-", "\\[em]": "—", "\\[en]": "–", "\\[bu]": "•",
           "\\[aq]": "'", "\\[dq]": '"', "\\[lq]": "“", "\\[rq]": "”", "\\[co]": "©", "\\[hy]": "-"}
_SIMPLE = (("\\-", "-"), ("\\e", "\\"), ("\\&", ""), ("\\|", ""), ("\\^", ""), ("\\~", " "), ("\\ ", " "),
           ("\\0", " "), ("\\c", ""), ("\\:", ""), ("\\%", ""),
           ("\\{", ""), ("\\}", ""))
_QUOTED = re.compile(r'"([^"]*)"|(\S+)')


def roff_to_text(source: str) -> str:
    """The readable text of a man page's roff source: requests that lay out or define dropped, the
    arguments of the others (`.SH NAME`, `.B word`, `.IP item`) kept, escapes replaced by their
    glyphs or removed, a paragraph request starting a new paragraph."""
    out: list[str] = []
    skipping = False  # inside .de/.ig ... ..
    for line in source.splitlines():
        if skipping:
            skipping = not line.startswith("..")
            continue
        if line[1:].lstrip().startswith('\\"') or line in (".", "'"):  # a comment
            continue
        if line.startswith((".", "'")):
            request, _, args = line[1:].strip().partition(" ")
            if request in ("de", "ig", "am"):
                skipping = True
                continue
            if request in ("SH", "SS", "PP", "LP", "P", "TP", "IP", "HP", "Sh", "Ss", "Pp"):
                out.append("")
            if request in _SILENT_REQUESTS or not args:
                continue
            words = [a or b for a, b in _QUOTED.findall(args)]
            line = " ".join(words[:1] if request == "IP" else words)  # .IP's second argument is an indent
        out.append(_unescape(line))
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _unescape(line: str) -> str:
    line = _MOTION.sub("", _FONT.sub("", _SIZE.sub("", line)))
    for name, glyph in _GLYPHS.items():
        line = line.replace(name, glyph)
    line = _NAMED.sub("", line)
    for escape, text in _SIMPLE:
        line = line.replace(escape, text)
    return line


def _read(path: Path) -> str | None:
    """The file's text (gunzipped when it ends in .gz), or None when it is not UTF-8 text."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile):
        return None


def man_pages(root: Path = Path("/usr/share/man")) -> Iterator[tuple[str, str]]:
    english = sorted(root.glob("man*/*.gz"))  # English first, then the translations by language
    for path in english + sorted(root.glob("[!m]*/man*/*.gz")):
        source = _read(path)
        if source is None or source.lstrip().startswith(".so "):  # a page that only includes another
            continue
        yield str(path.relative_to(root)), roff_to_text(source)


_DOC_NAMES = re.compile(r"(README|NEWS|CHANGES|changelog|copyright|AUTHORS|TODO|FAQ|HISTORY)([._-].*)?$|"
                        r".*\.(txt|md|rst)(\.gz)?$", re.IGNORECASE)


def package_docs(root: Path = Path("/usr/share/doc")) -> Iterator[tuple[str, str]]:
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        if _DOC_NAMES.match(path.name) and (text := _read(path)) is not None:
            yield str(path.relative_to(root)), text


def licences(root: Path = Path("/usr/share/common-licenses")) -> Iterator[tuple[str, str]]:
    for path in sorted(p for p in root.iterdir() if p.is_file()):
        if (text := _read(path)) is not None:
            yield path.name, text


def docstrings(roots: tuple[Path, ...] | None = None) -> Iterator[tuple[str, str]]:
    """Docstrings of MIN_DOCSTRING_WORDS words or more: the standard library's, then the installed packages'."""
    roots = roots or (Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"]))
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if "site-packages" in path.relative_to(root).parts:  # the stdlib root holds no packages of its own
                continue
            try:
                tree = ast.parse(path.read_bytes())
            except (SyntaxError, ValueError, OSError):
                continue
            for node in [tree, *(n for n in ast.walk(tree) if isinstance(
                    n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]:
                text = ast.get_docstring(node, clean=True)
                if text and len(text.split()) >= MIN_DOCSTRING_WORDS:
                    yield f"{root.name}/{path.relative_to(root)}:{getattr(node, 'lineno', 0)}", text


READERS = {"man": man_pages, "doc": package_docs, "licence": licences, "docstring": docstrings}


def write_corpus(out_dir: Path, bytes_per_kind: int, kinds: tuple[str, ...] = KINDS) -> dict[str, dict]:
    """`out_dir/<kind>.jsonl` for each kind, documents in sorted order until the kind's text passes
    `bytes_per_kind` (UTF-8); returns {kind: {"docs", "bytes", "path"}}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for kind in kinds:
        path, docs, size = out_dir / f"{kind}.jsonl", 0, 0
        with path.open("w", encoding="utf-8") as f:
            for doc_id, text in READERS[kind]():
                if not text.strip():
                    continue
                f.write(json.dumps({"id": f"{kind}/{doc_id}", "text": text}, ensure_ascii=False) + "\n")
                docs, size = docs + 1, size + len(text.encode("utf-8"))
                if size >= bytes_per_kind:
                    break
        written[kind] = {"docs": docs, "bytes": size, "path": str(path)}
    return written


if __name__ == "__main__":
    budget = int(float(sys.argv[2])) if len(sys.argv) > 2 else 16 << 20
    print(json.dumps(write_corpus(Path(sys.argv[1]), budget), indent=1))
