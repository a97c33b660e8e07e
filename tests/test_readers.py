"""Readers on real files of every format, and on every kind of bad input."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest

from instructor_search.documents import Document
from instructor_search.errors import ReaderError
from instructor_search.indexer.readers import (
    SUPPORTED_EXTENSIONS,
    ReaderSettings,
    ReadFailure,
    Skipped,
    scan,
)


def make_pdf(pages: list[str], title: str | None = None) -> bytes:
    """A minimal valid PDF whose pages show ``pages`` (lines split on newlines) in Helvetica."""

    def escape(line: str) -> str:
        return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    page_ids = [4 + 2 * n for n in range(len(pages))]
    kids = " ".join(f"{pid} 0 R" for pid in page_ids)
    objects = {
        1: "<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>",
        3: "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    for pid, text in zip(page_ids, pages, strict=True):
        shown = " ".join(f"({escape(line)}) Tj T*" for line in text.split("\n"))
        stream = f"BT /F1 12 Tf 14 TL 72 720 Td {shown} ET"
        objects[pid] = (
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {pid + 1} 0 R >>"
        )
        objects[pid + 1] = f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream"
    trailer = "/Root 1 0 R"
    if title is not None:
        info = max(objects) + 1
        objects[info] = f"<< /Title ({escape(title)}) >>"
        trailer += f" /Info {info} 0 R"
    out = b"%PDF-1.4\n"
    offsets = {}
    for oid in sorted(objects):
        offsets[oid] = len(out)
        out += f"{oid} 0 obj\n{objects[oid]}\nendobj\n".encode("latin-1")
    xref = len(out)
    size = max(objects) + 1
    rows = "".join(f"{offsets[oid]:010d} 00000 n \n" for oid in range(1, size))
    out += f"xref\n0 {size}\n0000000000 65535 f \n{rows}".encode()
    out += f"trailer\n<< /Size {size} {trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def run(source: Path, **settings) -> tuple[dict[str, Document], list[ReadFailure], list[Skipped]]:
    docs: dict[str, Document] = {}
    failures, skipped = [], []
    for item in scan(source, ReaderSettings(**settings)):
        if isinstance(item, Document):
            assert item.id not in docs
            docs[item.id] = item
        elif isinstance(item, ReadFailure):
            failures.append(item)
        else:
            skipped.append(item)
    return docs, failures, skipped


def failure(failures: list[ReadFailure], path: str) -> ReadFailure:
    found = [f for f in failures if f.path == path]
    assert len(found) == 1, failures
    return found[0]


# -- every format --------------------------------------------------------------------------


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    write(root / "notes.txt", "\n\n  Shopping list  \nmilk\neggs\n")
    write(root / "guide" / "intro.md", "Some preface\n\n# Getting started #\n\nBody text.\n")
    write(root / "guide" / "usage.markdown", "## Second level first\n\nText.\n")
    write(root / "api.rst", ".. comment\n\n=====\nAPI\n=====\n\nReference\n---------\n\nBody.\n")
    write(
        root / "web" / "page.html",
        "<html><head><title>The &amp; Page</title><style>p {color: red}</style>"
        "<script>var hidden = 1;</script></head><body><nav>Home</nav>"
        "<h1>Heading</h1><p>First   paragraph\nwraps.</p><p>Second <b>bold</b> one.</p>"
        "<ul><li>one</li><li>two</li></ul><noscript>no js</noscript>"
        "<template>hidden template</template></body></html>",
    )
    write(root / "web" / "bare.htm", "<div><h2>Only h2</h2>text</div>")
    write(root / "paper.pdf", make_pdf(["First page line\nsecond line", "Page two"], "PDF Title"))
    return root


def test_folder_of_every_format(corpus: Path) -> None:
    docs, failures, skipped = run(corpus)
    assert failures == [] and skipped == []
    assert list(docs) == [
        "api.rst",
        "guide/intro.md",
        "guide/usage.markdown",
        "notes.txt",
        "paper.pdf",
        "web/bare.htm",
        "web/page.html",
    ]  # sorted walk

    notes = docs["notes.txt"]
    assert notes.title == "Shopping list"
    assert notes.text == "\n\n  Shopping list  \nmilk\neggs\n"  # as is
    assert notes.source == str(corpus / "notes.txt")
    stat = (corpus / "notes.txt").stat()
    assert notes.metadata == {
        "path": "notes.txt",
        "type": "txt",
        "folder": "",
        "size": stat.st_size,
        "mtime": stat.st_mtime,
        "title": "Shopping list",
    }

    intro = docs["guide/intro.md"]
    assert intro.title == "Getting started"
    assert intro.metadata["folder"] == "guide" and intro.metadata["type"] == "md"
    assert docs["guide/usage.markdown"].title == "Second level first"
    assert docs["guide/usage.markdown"].metadata["type"] == "markdown"

    assert docs["api.rst"].title == "API"

    page = docs["web/page.html"]
    assert page.title == "The & Page"
    assert page.text == "Home\n\nHeading\n\nFirst paragraph wraps.\n\nSecond bold one.\n\none\ntwo"
    for hidden in ("color", "hidden", "no js", "The & Page"):
        assert hidden not in page.text
    assert docs["web/bare.htm"].title == "Only h2"
    assert docs["web/bare.htm"].text == "Only h2\n\ntext"

    pdf = docs["paper.pdf"]
    assert pdf.title == "PDF Title"
    assert pdf.text == "First page line\nsecond line\n\nPage two"
    assert pdf.metadata["type"] == "pdf"


def test_titles_fall_back(tmp_path: Path) -> None:
    write(tmp_path / "fenced.md", "```bash\n# not a title\n```\n\nPlain first line\n")
    write(tmp_path / "front.md", "---\ntitle: 'From front matter'\ntags: [a]\n---\n# Heading\n")
    write(tmp_path / "overline.rst", "==========\n Overlined\n==========\n\ntext\n")
    write(tmp_path / "plain.rst", "Just a paragraph\nof text.\n")
    write(tmp_path / "untitled.html", "<p>no title here</p>")
    write(tmp_path / "head-unclosed.html", "<head><title>T</title><body><p>shown</p>")
    write(tmp_path / "untitled.pdf", make_pdf(["\nFirst line of the pdf\nmore"]))
    write(tmp_path / "long.txt", "word " * 100)
    docs, failures, _ = run(tmp_path)
    assert failures == []
    assert docs["fenced.md"].title == "Plain first line"
    assert docs["front.md"].title == "From front matter"
    assert docs["overline.rst"].title == "Overlined"
    assert docs["plain.rst"].title == "Just a paragraph"
    assert docs["untitled.html"].title == "untitled"  # the file stem
    assert docs["head-unclosed.html"].text == "shown"
    assert docs["head-unclosed.html"].title == "T"
    assert docs["untitled.pdf"].title == "First line of the pdf"
    long_title = docs["long.txt"].title
    assert len(long_title) <= 200 and long_title.startswith("word word") and long_title[-1] == "d"


def test_single_file_source(corpus: Path) -> None:
    docs, failures, skipped = run(corpus / "guide" / "intro.md")
    assert list(docs) == ["intro.md"] and not failures and not skipped
    assert docs["intro.md"].metadata["folder"] == ""
    assert docs["intro.md"].source == str(corpus / "guide" / "intro.md")


def test_missing_source_raises(tmp_path: Path) -> None:
    with pytest.raises(ReaderError, match="nowhere"):
        scan(tmp_path / "nowhere")


def test_supported_extensions() -> None:
    assert {".txt", ".md", ".markdown", ".rst", ".html", ".htm", ".pdf"} <= SUPPORTED_EXTENSIONS
    assert {".jsonl", ".json", ".csv"} <= SUPPORTED_EXTENSIONS


def test_extension_is_case_insensitive(tmp_path: Path) -> None:
    write(tmp_path / "LOUD.TXT", "hello")
    docs, _, _ = run(tmp_path)
    assert docs["LOUD.TXT"].metadata["type"] == "txt"


# -- records -------------------------------------------------------------------------------


def test_jsonl_records(tmp_path: Path) -> None:
    lines = [
        json.dumps({"_id": "d1", "title": "One", "text": "first", "metadata": {"year": 2020}}),
        "",
        json.dumps({"id": 7, "text": "second", "lang": "en"}),
        "{broken json",
        json.dumps({"_id": "d3", "title": "no text"}),
        json.dumps({"text": "no id"}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"_id": "d1", "text": "again"}),
        json.dumps({"_id": "d4", "text": "   "}),
        json.dumps({"_id": "d5", "text": "last one survives"}),
    ]
    path = write(tmp_path / "data" / "corpus.jsonl", "\n".join(lines) + "\n")
    docs, failures, _ = run(tmp_path)
    assert list(docs) == ["d1", "7", "d5"]
    d1 = docs["d1"]
    assert (d1.title, d1.text, d1.source) == ("One", "first", f"{path}:1")
    assert d1.metadata == {
        "year": 2020,
        "type": "jsonl",
        "path": "data/corpus.jsonl",
        "folder": "data",
        "line": 1,
        "title": "One",
    }
    assert docs["7"].title == "" and docs["7"].metadata["lang"] == "en"
    assert docs["7"].metadata["line"] == 3
    by_line = {f.line: f for f in failures}
    assert set(by_line) == {4, 5, 6, 7, 8, 9}
    assert all(f.path == "data/corpus.jsonl" for f in failures)
    assert "invalid JSON" in by_line[4].reason
    assert "no text" in by_line[5].reason and "'text'" in by_line[5].reason
    assert "no id" in by_line[6].reason
    assert "JSON object" in by_line[7].reason
    assert "duplicate id 'd1'" in by_line[8].reason
    assert "data/corpus.jsonl:1" in by_line[8].reason
    assert "no text" in by_line[9].reason


def test_jsonl_bad_utf8_line_and_bom(tmp_path: Path) -> None:
    good = json.dumps({"_id": "a", "text": "ok"}).encode()
    write(tmp_path / "c.jsonl", b"\xef\xbb\xbf" + good + b'\n{"_id": "b", "text": "\xff"}\n')
    docs, failures, _ = run(tmp_path)
    assert list(docs) == ["a"]
    assert failures[0].line == 2 and "not valid UTF-8" in failures[0].reason


def test_json_records(tmp_path: Path) -> None:
    write(tmp_path / "list.json", json.dumps([{"_id": "a", "text": "x"}, {"_id": "b"}, 5]))
    write(tmp_path / "wrapped.json", json.dumps({"corpus": [{"id": "c", "text": "y"}]}))
    write(tmp_path / "other.json", json.dumps({"name": "package"}))
    write(tmp_path / "syntax.json", '[\n  {"_id": "z",\n  oops\n]')
    docs, failures, _ = run(tmp_path)
    assert list(docs) == ["a", "c"]
    assert docs["a"].source == f"{tmp_path / 'list.json'}#1"
    assert docs["a"].metadata["record"] == 1 and docs["a"].metadata["type"] == "json"
    list_failures = [f for f in failures if f.path == "list.json"]
    assert [f.line for f in list_failures] == [None, None]
    assert "record 2" in list_failures[0].reason and "no text" in list_failures[0].reason
    assert "record 3" in list_failures[1].reason
    assert "'documents', 'records' or 'corpus'" in failure(failures, "other.json").reason
    syntax = failure(failures, "syntax.json")
    assert syntax.line == 3 and "invalid JSON" in syntax.reason


def test_csv_records(tmp_path: Path) -> None:
    write(
        tmp_path / "with_id.csv",
        '_id,title,text,lang\n1,T1,"first, with comma",en\n2,T2,"multi\nline",fr\n3,T3,,de\n'
        "4,T4,too,many,fields\n5,T5,fifth,it\n",
    )
    write(tmp_path / "no_id.csv", "text,source\nalpha,a\nbeta,b\n")
    write(tmp_path / "wrong.csv", "body\nhello\n")
    docs, failures, _ = run(tmp_path)
    assert [d for d in docs if not d.startswith("no_id")] == ["1", "2", "5"]
    assert docs["1"].text == "first, with comma" and docs["1"].title == "T1"
    assert docs["1"].metadata == {
        "lang": "en",
        "type": "csv",
        "path": "with_id.csv",
        "folder": "",
        "line": 2,
        "title": "T1",
    }
    assert docs["2"].text == "multi\nline" and docs["2"].metadata["line"] == 3
    assert docs["5"].metadata["line"] == 7 and docs["5"].source.endswith("with_id.csv:7")
    with_id = {f.line: f.reason for f in failures if f.path == "with_id.csv"}
    assert set(with_id) == {5, 6}
    assert "no text" in with_id[5] and "more fields" in with_id[6]
    assert docs["no_id.csv:1"].text == "alpha" and docs["no_id.csv:2"].metadata["source"] == "b"
    wrong = failure(failures, "wrong.csv")
    assert "no 'text' column" in wrong.reason and "csv_text_column" in wrong.reason


def test_csv_columns_from_settings(tmp_path: Path) -> None:
    write(tmp_path / "c.csv", "key,body\nk1,hello\nk2,world\n")
    docs, failures, _ = run(tmp_path, csv_text_column="body", csv_id_column="key")
    assert not failures
    assert {d: doc.text for d, doc in docs.items()} == {"k1": "hello", "k2": "world"}
    _, failures, _ = run(tmp_path, csv_text_column="body", csv_id_column="nope")
    assert "no 'nope' column" in failures[0].reason


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", json.dumps({"_id": "same", "text": "one"}) + "\n")
    write(tmp_path / "b.csv", "id,text\nsame,two\n")
    docs, failures, _ = run(tmp_path)
    assert docs["same"].text == "one"
    dup = failure(failures, "b.csv")
    assert dup.line == 2 and "duplicate id 'same', first seen at a.jsonl:1" in dup.reason


# -- bad input -----------------------------------------------------------------------------


def test_bad_files_are_failures_and_the_scan_goes_on(tmp_path: Path) -> None:
    write(tmp_path / "a_binary.txt", b"abc\x00\x01\x02")
    write(tmp_path / "b_latin1.txt", "caf\u00e9 ok".encode("latin-1"))
    write(tmp_path / "c_empty.md", "")
    write(tmp_path / "d_blank.rst", " \n\t\n")
    write(tmp_path / "e_broken.pdf", b"%PDF-1.4\nthis is not a pdf")
    write(tmp_path / "f_empty.jsonl", "\n\n")
    write(tmp_path / "g_script_only.html", "<script>x()</script>")
    write(tmp_path / "h_bom.txt", b"\xef\xbb\xbfBOM text")
    write(tmp_path / "i_utf16.txt", "utf16".encode("utf-16"))
    write(tmp_path / "z_good.txt", "still read")
    docs, failures, _ = run(tmp_path)
    assert list(docs) == ["h_bom.txt", "z_good.txt"]
    assert docs["h_bom.txt"].text == "BOM text"
    assert "binary" in failure(failures, "a_binary.txt").reason
    latin = failure(failures, "b_latin1.txt")
    assert latin.reason == "not valid UTF-8 at byte 3; convert it to UTF-8"
    assert latin.line is None
    assert failure(failures, "c_empty.md").reason == "empty file"
    assert failure(failures, "d_blank.rst").reason == "empty file"
    assert "PDF" in failure(failures, "e_broken.pdf").reason
    assert failure(failures, "f_empty.jsonl").reason == "empty file"
    assert "no visible text" in failure(failures, "g_script_only.html").reason
    assert "UTF-16" in failure(failures, "i_utf16.txt").reason


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    locked = write(tmp_path / "locked.txt", "secret")
    write(tmp_path / "open.txt", "fine")
    locked.chmod(0)
    try:
        docs, failures, _ = run(tmp_path)
    finally:
        locked.chmod(0o644)
    assert list(docs) == ["open.txt"]
    assert "permission denied" in failure(failures, "locked.txt").reason


def test_pdf_without_pypdf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "doc.pdf", make_pdf(["text"]))
    monkeypatch.setitem(sys.modules, "pypdf", None)  # makes `import pypdf` fail
    _, failures, _ = run(tmp_path)
    assert "pip install 'instructor-search[pdf]'" in failure(failures, "doc.pdf").reason


def test_unknown_extensions_are_skipped(tmp_path: Path) -> None:
    write(tmp_path / "image.xyz", b"\x89PNG")
    write(tmp_path / "Makefile", "all:")
    write(tmp_path / "ok.txt", "text")
    docs, failures, skipped = run(tmp_path)
    assert list(docs) == ["ok.txt"] and not failures
    reasons = {s.path: s.reason for s in skipped}
    assert set(reasons) == {"image.xyz", "Makefile"}
    assert "unknown extension .xyz" in reasons["image.xyz"]
    assert "no file extension" in reasons["Makefile"]


# -- walking -------------------------------------------------------------------------------


def test_hidden_files_and_folders_are_skipped(tmp_path: Path) -> None:
    write(tmp_path / ".hidden.txt", "no")
    write(tmp_path / ".git" / "config.txt", "no")
    write(tmp_path / "sub" / ".cache" / "x.md", "no")
    write(tmp_path / "sub" / "seen.md", "yes")
    docs, failures, skipped = run(tmp_path)
    assert list(docs) == ["sub/seen.md"] and not failures and not skipped


def test_include_and_exclude_globs(tmp_path: Path) -> None:
    for rel in ["top.md", "top.txt", "docs/a.md", "docs/deep/b.md", "drafts/c.md", "docs/x.txt"]:
        write(tmp_path / rel, rel)
    assert list(run(tmp_path, include=("*.md",))[0]) == [
        "docs/a.md",
        "docs/deep/b.md",
        "drafts/c.md",
        "top.md",
    ]
    assert list(run(tmp_path, include=("**/*.md",), exclude=("drafts",))[0]) == [
        "docs/a.md",
        "docs/deep/b.md",
        "top.md",
    ]
    assert list(run(tmp_path, include=("docs/**/*.md",))[0]) == ["docs/a.md", "docs/deep/b.md"]
    assert list(run(tmp_path, exclude=("*.txt", "docs/deep/**"))[0]) == [
        "docs/a.md",
        "drafts/c.md",
        "top.md",
    ]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write(root / "sub" / "real.txt", "real text")
    write(tmp_path / "outside.md", "# Outside\n")
    os.symlink(root, root / "sub" / "loop")  # a folder link back to an ancestor
    os.symlink(root / "self", root / "self")  # a link to itself
    os.symlink(tmp_path / "missing.txt", root / "dangling.txt")
    os.symlink(tmp_path / "outside.md", root / "linked.md")  # followed
    docs, failures, skipped = run(root)
    assert list(docs) == ["linked.md", "sub/real.txt"] and not skipped
    assert docs["linked.md"].title == "Outside"
    assert docs["linked.md"].source == str(root / "linked.md")
    reasons = {f.path: f.reason for f in failures}
    assert set(reasons) == {"dangling.txt", "self", "sub/loop"}
    assert "symlink loop" in reasons["sub/loop"] and "symlink loop" in reasons["self"]
    assert "broken symlink" in reasons["dangling.txt"]


# -- names and kinds of files that are not text files ------------------------------------------


def test_a_file_name_that_is_not_utf8_is_reported_escaped_and_the_scan_goes_on(
    tmp_path: Path,
) -> None:
    root = tmp_path / "corpus"
    write(root / "good.md", "# Good\n\ntext")
    bad_file = os.fsencode(root) + b"/caf\xe9.md"  # Latin-1 bytes: not UTF-8
    with open(bad_file, "wb") as handle:
        handle.write(b"# Cafe\n\ntext")
    os.mkdir(os.fsencode(root) + b"/d\xfcr")
    with open(os.fsencode(root) + b"/d\xfcr/inner.md", "wb") as handle:
        handle.write(b"# Inner\n\ntext")
    docs, failures, skipped = run(root)
    assert list(docs) == ["good.md"] and not skipped
    reasons = {f.path: f.reason for f in failures}
    assert set(reasons) == {"caf\\xe9.md", "d\\xfcr"}  # printable, what `ls -b` shows
    assert all("not valid UTF-8" in reason for reason in reasons.values())
    for path in reasons:
        path.encode("utf-8")  # what once crashed a build: a name SQLite cannot store


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_links_to_devices_and_pipes_are_named_for_what_they_are(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write(root / "good.txt", "text")
    os.symlink("/dev/zero", root / "zero.txt")
    os.mkfifo(root / "pipe.txt")
    docs, failures, skipped = run(root)
    assert list(docs) == ["good.txt"] and not failures
    reasons = {s.path: s.reason for s in skipped}
    assert reasons["zero.txt"] == "symlink to /dev/zero, a character device, not a regular file"
    assert reasons["pipe.txt"] == "a named pipe (FIFO), not a regular file"
    single = run(root / "zero.txt")[2]
    assert [s.reason for s in single] == ["a character device, not a regular file"]


def test_pypdf_warnings_go_to_our_log_with_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = make_pdf(["Hello page"])
    at = data.rfind(b"startxref\n") + len(b"startxref\n")
    write(tmp_path / "c" / "damaged.pdf", data[:at] + b"9" + data[at:])  # a wrong xref offset
    caplog.set_level(logging.DEBUG)
    docs, failures, _ = run(tmp_path / "c")
    assert list(docs) == ["damaged.pdf"] and not failures  # pypdf repairs it
    assert not [r for r in caplog.records if r.name.startswith("pypdf")]
    ours = [r for r in caplog.records if r.name.endswith("indexer.readers")]
    assert ours and all(r.levelno == logging.INFO for r in ours)
    assert "damaged.pdf: pypdf: incorrect startxref" in ours[0].getMessage()
    assert logging.getLogger("pypdf").propagate  # left as it was
