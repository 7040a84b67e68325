"""Knowledge-base parsing, chunking and token counting, on real files of every format."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelmill.kb.chunk import chunk
from modelmill.kb.parse import PARSERS, SUPPORTED, parse, register_parser
from modelmill.kb.tokens import bm25_tokens, count_tokens
from modelmill.kb.types import Document, KBError, Unit

ZH_SENTENCE = "退货申请需要在收到商品后三十天内提交，并保留原始包装和购物发票。"
EN_SENTENCE = "Customers may return any unused item within thirty days of delivery for a full refund."


def checked_chunks(doc: Document, max_tokens: int = 200, overlap: int = 40):
    """Chunk ``doc`` and check what every chunk must satisfy, whatever the format."""
    chunks = chunk(doc, max_tokens=max_tokens, overlap=overlap)
    assert chunks, "a document with text has chunks"
    for i, c in enumerate(chunks):
        assert c.text == doc.text[c.start:c.end]
        assert c.text == c.text.strip() and c.text
        assert count_tokens(c.text) <= max_tokens
        assert c.ordinal == i and c.title == doc.title
    return chunks


def units(doc: Document) -> list[tuple[str, str, str]]:
    return [(u.kind, u.section, u.text) for u in doc.units]


# ---- formats --------------------------------------------------------------------------

def test_txt_paragraphs_and_title(tmp_path):
    p = tmp_path / "return_policy-v2.txt"
    p.write_text("First   paragraph\twith  spaces.\n\n\n  退货 政策：三十天内可退。\r\n第二行。\n\n", encoding="utf-8")
    doc = parse(p)
    assert doc.title == "return policy v2" and doc.format == "txt" and doc.source == str(p)
    assert [u.text for u in doc.units] == ["First paragraph with spaces.", "退货 政策：三十天内可退。\n第二行。"]
    assert doc.text == "First paragraph with spaces.\n\n退货 政策：三十天内可退。\n第二行。"
    checked_chunks(doc)


def test_markdown_headings_become_sections(tmp_path):
    p = tmp_path / "handbook.md"
    p.write_text("---\nlayout: page\n---\n# Acme Handbook\n\nWelcome to [Acme](https://acme.example).\n\n"
                 "## Returns\n\n- one\n- two\n\n### Refunds ###\nRefunds take 5 days.\n\n"
                 "```python\ndef f():\n    return 1\n```\n\n## Shipping\nShips in 2 days.\n\n"
                 "Setext heading\n==============\nUnder setext.\n\n~~~\n  unclosed   fence\n", encoding="utf-8")
    doc = parse(p)
    assert doc.title == "Acme Handbook" and doc.format == "md"
    assert units(doc) == [
        ("text", "", "Welcome to Acme."),
        ("text", "Returns", "- one\n- two"),
        ("text", "Returns > Refunds", "Refunds take 5 days."),
        ("text", "Returns > Refunds", "def f():\n    return 1"),
        ("text", "Shipping", "Ships in 2 days."),
        ("text", "Setext heading", "Under setext."),
        ("text", "Setext heading", "unclosed   fence"),
    ]
    assert [c.section for c in checked_chunks(doc)] == ["", "Returns", "Returns > Refunds", "Shipping",
                                                        "Setext heading"]


def test_markdown_title_falls_back_to_file_name(tmp_path):
    p = tmp_path / "notes.markdown"
    p.write_text("## Only a section\n\ntext\n\n# Late H1\n\nmore\n", encoding="utf-8")
    doc = parse(p)
    assert doc.title == "notes"
    assert [(u.section, u.text) for u in doc.units] == [("Only a section", "text"), ("Late H1", "more")]


def test_html_blocks_tables_and_furniture(tmp_path):
    p = tmp_path / "help.html"
    p.write_text("""<html><head><title>Help Center</title><style>p {color: red}</style></head><body>
        <header>Site banner</header><nav><a href="/">Home</a></nav>
        <h1>Help Center</h1><p>Hello <b>world</b>.<br>Second line</p><script>var x = 1;</script>
        <h2>Prices</h2>
        <table><thead><tr><th>Item</th><th>Price</th></tr></thead>
               <tbody><tr><td>Tea</td><td>3</td></tr><tr><td>Coffee</td><td></td></tr></tbody></table>
        <h3>Notes</h3><div>Loose <a href="#">text</a><ul><li>one</li><li>two<ul><li>nested</li></ul></li></ul></div>
        <blockquote>Quoted.</blockquote><pre>  code
    more</pre>
        <footer>Copyright</footer></body></html>""", encoding="utf-8")
    doc = parse(p)
    assert doc.title == "Help Center" and doc.format == "html"
    assert units(doc) == [
        ("text", "", "Hello world.\nSecond line"),
        ("row", "Prices", "Item: Tea; Price: 3"),
        ("row", "Prices", "Item: Coffee"),
        ("text", "Prices > Notes", "Loose text"),
        ("text", "Prices > Notes", "one"),
        ("text", "Prices > Notes", "two"),
        ("text", "Prices > Notes", "nested"),
        ("text", "Prices > Notes", "Quoted."),
        ("text", "Prices > Notes", "code\n  more"),
    ]
    assert not any(w in doc.text for w in ("banner", "Home", "var x", "Copyright", "color"))
    checked_chunks(doc)


def test_html_title_from_h1_and_first_row_header(tmp_path):
    p = tmp_path / "page.htm"
    p.write_text("<h1>价格表</h1><table><tr><td>商品</td><td>价格</td></tr><tr><td>茶</td><td>3元</td></tr></table>",
                 encoding="utf-8")
    doc = parse(p)
    assert doc.title == "价格表"
    assert units(doc) == [("row", "", "商品: 茶; 价格: 3元")]


def make_pdf(path: Path, pages: list[str], title: str | None = None) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    if title:
        pdf.set_title(title)
    pdf.set_font("Helvetica", size=11)
    for text in pages:
        pdf.add_page()
        for para in text.split("\n\n"):
            pdf.multi_cell(0, 6, para)
            pdf.ln(6)
    pdf.output(str(path))
    return path


def test_pdf_pages_and_title(tmp_path):
    page1 = " ".join([EN_SENTENCE] * 8)
    page2 = "Warranty lasts two years.\n\n" + " ".join(["Repairs are free during the warranty."] * 12)
    p = make_pdf(tmp_path / "manual.pdf", [page1, page2, ""], title="Acme Manual")
    doc = parse(p)
    assert doc.title == "Acme Manual" and doc.format == "pdf"
    assert {u.page for u in doc.units} == {1, 2}
    assert all("Warranty" not in u.text for u in doc.units if u.page == 1)
    assert [u for u in doc.units if u.page == 2][0].text.startswith("Warranty lasts two years.")
    chunks = checked_chunks(doc, max_tokens=64, overlap=16)
    page2_start = next(u.start for u in doc.units if u.page == 2)
    assert [c.page for c in chunks] == [1 if c.start < page2_start else 2 for c in chunks]
    assert chunks[0].page == 1 and chunks[-1].page == 2


def test_pdf_title_defaults_to_file_name(tmp_path):
    assert parse(make_pdf(tmp_path / "spec_sheet.pdf", ["Some text."])).title == "spec sheet"


def test_pdf_encrypted(tmp_path):
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=make_pdf(tmp_path / "plain.pdf", ["Secret text."]))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    writer.write(tmp_path / "locked.pdf")
    with pytest.raises(KBError) as e:
        parse(tmp_path / "locked.pdf")
    msg = str(e.value)
    assert "locked.pdf" in msg and "encrypted" in msg and "qpdf --decrypt" in msg and "add it again" in msg


def test_pdf_with_empty_user_password_reads(tmp_path):
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=make_pdf(tmp_path / "plain.pdf", ["Printable text."]))
    writer.encrypt(user_password="", owner_password="owner", algorithm="RC4-128")
    writer.write(tmp_path / "restricted.pdf")
    assert parse(tmp_path / "restricted.pdf").text == "Printable text."


def test_pdf_corrupt_and_scanned(tmp_path):
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.4\nthis is not really a pdf\n")
    with pytest.raises(KBError) as e:
        parse(bad)
    assert "broken.pdf" in str(e.value) and "not a readable PDF" in str(e.value)

    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.rect(10, 10, 80, 120, style="F")  # a picture of a page, no text layer
    pdf.output(str(tmp_path / "scan.pdf"))
    with pytest.raises(KBError) as e:
        parse(tmp_path / "scan.pdf")
    assert "scan.pdf" in str(e.value) and "no text layer" in str(e.value) and "OCR" in str(e.value)


def make_docx(path: Path, core_title: str = "") -> Path:
    import docx

    d = docx.Document()
    d.core_properties.title = core_title
    d.add_heading("Employee Handbook", level=0)
    d.add_paragraph("Welcome   aboard.")
    d.add_heading("Leave", level=1)
    d.add_paragraph("Annual leave is 20 days.")
    table = d.add_table(rows=3, cols=2)
    for r, (a, b) in enumerate([("Type", "Days"), ("Annual", "20"), ("Sick", "10")]):
        table.cell(r, 0).text, table.cell(r, 1).text = a, b
    d.add_heading("Sick leave", level=2)
    d.add_paragraph("")
    d.add_paragraph("Bring a note after 3 days.")
    d.add_heading("Pay", level=1)
    d.add_paragraph("Paid monthly.")
    d.save(str(path))
    return path


def test_docx_headings_tables_in_order(tmp_path):
    doc = parse(make_docx(tmp_path / "hr.docx"))
    assert doc.title == "Employee Handbook" and doc.format == "docx"
    assert units(doc) == [
        ("text", "", "Welcome aboard."),
        ("text", "Leave", "Annual leave is 20 days."),
        ("row", "Leave", "Type: Annual; Days: 20"),
        ("row", "Leave", "Type: Sick; Days: 10"),
        ("text", "Leave > Sick leave", "Bring a note after 3 days."),
        ("text", "Pay", "Paid monthly."),
    ]
    chunks = checked_chunks(doc)
    assert [c.text for c in chunks if c.section == "Leave"] == [
        "Annual leave is 20 days.", "Type: Annual; Days: 20", "Type: Sick; Days: 10"]


def test_docx_core_title_wins_and_bad_zip(tmp_path):
    assert parse(make_docx(tmp_path / "hr.docx", core_title="HR Policies")).title == "HR Policies"
    bad = tmp_path / "fake.docx"
    bad.write_text("plain text, not a zip", encoding="utf-8")
    with pytest.raises(KBError) as e:
        parse(bad)
    assert "fake.docx" in str(e.value) and "not a readable .docx" in str(e.value) and "save it as .docx" in str(e.value)


def test_csv_faq_rows_become_qa_units(tmp_path):
    p = tmp_path / "faq.csv"
    p.write_text('Question,Answer,Category\nHow do I return?,"Ship it back, with the label.",returns\n'
                 ",,\nWhat is X?,It is Y.,\n", encoding="utf-8")
    doc = parse(p)
    assert doc.title == "faq" and doc.format == "csv"
    assert units(doc) == [("qa", "", "Q: How do I return?\nA: Ship it back, with the label.\nCategory: returns"),
                          ("qa", "", "Q: What is X?\nA: It is Y.")]
    chunks = checked_chunks(doc)
    assert [c.text for c in chunks] == [u.text for u in doc.units]  # one FAQ pair, one chunk


def test_csv_chinese_faq_and_sniffed_delimiter(tmp_path):
    p = tmp_path / "常见问题.csv"
    p.write_text("问题;答案\n怎么退货？;三十天内寄回即可。\n", encoding="utf-8-sig")
    assert units(parse(p)) == [("qa", "", "Q: 怎么退货？\nA: 三十天内寄回即可。")]


def test_csv_plain_table_rows(tmp_path):
    p = tmp_path / "products.tsv"
    p.write_text("name\tprice\tnote\nTea\t3\t\nCoffee\t4\tstrong\n\n", encoding="utf-8")
    assert units(parse(p)) == [("row", "", "name: Tea; price: 3"),
                               ("row", "", "name: Coffee; price: 4; note: strong")]


def test_xlsx_sheets_are_sections(tmp_path):
    import openpyxl

    wb = openpyxl.Workbook()
    faq = wb.active
    faq.title = "FAQ"
    faq.append([None, None])
    faq.append(["提问", "回答"])
    faq.append(["怎么退货？", "三十天内寄回。"])
    prices = wb.create_sheet("Prices")
    prices.append(["Item", "Price", "Stock"])
    prices.append(["Tea", 3.0, 12])
    prices.append([None, None, None])
    prices.append(["Coffee", 4.5, None])
    wb.save(tmp_path / "shop.xlsx")
    doc = parse(tmp_path / "shop.xlsx")
    assert doc.title == "shop" and doc.format == "xlsx"
    assert units(doc) == [("qa", "FAQ", "Q: 怎么退货？\nA: 三十天内寄回。"),
                          ("row", "Prices", "Item: Tea; Price: 3; Stock: 12"),
                          ("row", "Prices", "Item: Coffee; Price: 4.5")]
    assert [c.section for c in checked_chunks(doc)] == ["FAQ", "Prices", "Prices"]


def test_xlsx_bad_file(tmp_path):
    bad = tmp_path / "broken.xlsx"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(KBError) as e:
        parse(bad)
    assert "broken.xlsx" in str(e.value) and "not a readable .xlsx" in str(e.value)


# ---- text decoding ----------------------------------------------------------------------

def test_undecodable_text_names_line_offset_and_fix(tmp_path):
    p = tmp_path / "legacy.txt"
    p.write_bytes("first line\n\n第二行".encode("gb18030"))
    with pytest.raises(KBError) as e:
        parse(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:3:") and "byte offset 12" in msg
    assert "re-save it as UTF-8, or pass --encoding (e.g. gb18030, latin-1)" in msg
    assert parse(p, encoding="gb18030").units[1].text == "第二行"


def test_bom_and_utf16(tmp_path):
    p = tmp_path / "bom.md"
    p.write_text("# 标题\n\n正文", encoding="utf-8-sig")
    assert parse(p).title == "标题"
    p16 = tmp_path / "wide.txt"
    p16.write_text("hello\n\nworld", encoding="utf-16")
    assert [u.text for u in parse(p16).units] == ["hello", "world"]
    with pytest.raises(KBError, match="--encoding: unknown encoding 'nope'"):
        parse(p16, encoding="nope")


def test_utf16_without_bom_is_not_read_as_utf8(tmp_path):
    p = tmp_path / "nobom.txt"
    p.write_bytes("hello".encode("utf-16-le"))
    with pytest.raises(KBError, match="NUL bytes"):
        parse(p)


# ---- file errors and the registry -------------------------------------------------------

def test_missing_unsupported_empty_and_huge(tmp_path):
    with pytest.raises(KBError, match="nothere.txt: no such file"):
        parse(tmp_path / "nothere.txt")

    odd = tmp_path / "slides.pptx"
    odd.write_bytes(b"x")
    with pytest.raises(KBError) as e:
        parse(odd)
    assert "unsupported file type '.pptx'" in str(e.value) and ", ".join(SUPPORTED) in str(e.value)
    assert "modelmill.kb_parsers" in str(e.value)

    empty = tmp_path / "empty.md"
    empty.write_bytes(b"")
    with pytest.raises(KBError, match="empty.md: has no text"):
        parse(empty)
    blank = tmp_path / "blank.html"
    blank.write_text("<html><script>only()</script>\n \n</html>", encoding="utf-8")
    with pytest.raises(KBError, match="blank.html: has no text"):
        parse(blank)

    big = tmp_path / "big.txt"
    big.write_text("word " * 1000, encoding="utf-8")
    with pytest.raises(KBError) as e:
        parse(big, max_bytes=1000)
    assert "big.txt: is 5000 bytes, over the 1000 bytes limit" in str(e.value)
    assert "--max-bytes" in str(e.value) and "split" in str(e.value)


def test_register_parser_adds_a_format(tmp_path, monkeypatch):
    monkeypatch.setattr("modelmill.kb.parse.PARSERS", dict(PARSERS))
    supported = list(SUPPORTED)
    monkeypatch.setattr("modelmill.kb.parse.SUPPORTED", supported)

    def parse_rev(path, *, encoding=None):
        return Document("Reversed", [Unit(path.read_text(encoding="utf-8")[::-1], section="All")])

    register_parser(("rev",), parse_rev)
    (tmp_path / "x.REV").write_text("olleh", encoding="utf-8")
    doc = parse(tmp_path / "x.REV")
    assert (doc.title, doc.format, units(doc)) == ("Reversed", "rev", [("text", "All", "hello")])
    assert ".rev" in supported and ".rev" not in SUPPORTED


# ---- chunking -----------------------------------------------------------------------------

def test_chinese_without_spaces_splits_at_sentence_ends(tmp_path):
    p = tmp_path / "政策.txt"
    p.write_text(ZH_SENTENCE * 30, encoding="utf-8")
    doc = parse(p)
    chunks = checked_chunks(doc, max_tokens=100, overlap=40)
    assert len(chunks) > 5
    assert all(c.text.endswith("。") for c in chunks)
    assert all(" " not in c.text for c in chunks)
    for a, b in zip(chunks, chunks[1:]):
        assert a.start < b.start < a.end < b.end  # overlapping, moving on
        assert doc.text[b.start - 1] == "。"  # the overlap starts at a sentence


def test_english_overlap_starts_at_a_sentence(tmp_path):
    p = tmp_path / "policy.txt"
    p.write_text(" ".join(f"Rule {i}. {EN_SENTENCE}" for i in range(20)), encoding="utf-8")
    doc = parse(p)
    chunks = checked_chunks(doc, max_tokens=80, overlap=30)
    assert len(chunks) > 3
    for a, b in zip(chunks, chunks[1:]):
        assert a.start < b.start < a.end < b.end
        assert doc.text[b.start - 2:b.start] == ". "
    assert chunk(doc, max_tokens=80, overlap=0)[1].start > chunks[0].end  # overlap 0: none


def test_long_sentence_and_long_word_are_cut_hard():
    words = " ".join(f"word{i}" for i in range(300))  # one sentence, no line breaks
    # a run of CJK characters with no punctuation: one token each, so it must be cut by characters
    doc = Document("T", [Unit(words, "S"), Unit("退" * 2000, "S")])
    chunks = checked_chunks(doc, max_tokens=50, overlap=10)
    assert all(c.section == "S" for c in chunks)
    assert all(doc.text[c.start - 1] == " " for c in chunks[1:] if c.end <= len(words))  # whole words
    assert sum(c.text.count("退") for c in chunks) >= 2000
    assert all(count_tokens(c.text) <= 50 for c in chunks)


def test_units_pack_within_a_section_and_never_across():
    doc = Document("Guide", [Unit("Alpha one.", "A"), Unit("Alpha two.", "A"), Unit("Beta.", "B"),
                             Unit("Q: q?\nA: a.", "B", kind="qa"), Unit("Gamma.", "B")])
    chunks = checked_chunks(doc)
    assert [(c.section, c.text) for c in chunks] == [
        ("A", "Alpha one.\n\nAlpha two."), ("B", "Beta."), ("B", "Q: q?\nA: a."), ("B", "Gamma.")]


def test_chunk_page_is_where_it_starts():
    doc = Document("P", [Unit("Page one text.", page=1), Unit("Page two text.", page=2)])
    assert [(c.page, c.text) for c in checked_chunks(doc)] == [(1, "Page one text.\n\nPage two text.")]


@pytest.mark.parametrize("kwargs, flag", [({"max_tokens": 8}, "--chunk-tokens"),
                                          ({"overlap": -1}, "--chunk-overlap"),
                                          ({"max_tokens": 100, "overlap": 50}, "--chunk-overlap")])
def test_chunk_arguments_are_checked(kwargs, flag):
    with pytest.raises(KBError, match=f"^{flag}:"):
        chunk(Document("T", [Unit("text")]), **kwargs)


# ---- tokens -------------------------------------------------------------------------------

def test_count_tokens():
    assert count_tokens("") == 0 and count_tokens("   \n") == 0
    assert count_tokens("退货政策") == 4
    assert count_tokens("退货，政策。") == 6
    assert count_tokens("the cat sat") == 3
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("internationalization") > 1
    assert count_tokens("3天") == 2


def test_bm25_tokens():
    assert bm25_tokens("The Refund policy, of THE store!") == ["refund", "polici", "store"]
    # English words are stemmed, so a plural in the question matches the singular in the text
    assert bm25_tokens("How do refunds work?") == bm25_tokens("refund works")
    zh = bm25_tokens("我的退货政策是什么？")
    assert "退货" in zh and "政策" in zh and "的" not in zh and "？" not in zh
    assert bm25_tokens("iPhone15的价格") == ["iphone15", "价格"]
    assert "共和国" in bm25_tokens("中华人民共和国")


def test_markdown_pipe_tables_become_rows(tmp_path):
    p = tmp_path / "prices.md"
    p.write_text("# Prices\n\n## Plans\n\n| Plan | Price |\n|---|---:|\n| Basic | 10 € |\n| Team | 49 € |\n\n"
                 "| question | answer |\n|---|---|\n| Can I cancel? | Yes, any time. |\n", encoding="utf-8")
    units = parse(p).units
    assert [(u.kind, u.section, u.text) for u in units] == [
        ("row", "Plans", "Plan: Basic; Price: 10 €"), ("row", "Plans", "Plan: Team; Price: 49 €"),
        ("qa", "Plans", "Q: Can I cancel?\nA: Yes, any time.")]


def _rewrite_zip_member(path: Path, member: str, edit) -> None:
    import zipfile

    with zipfile.ZipFile(path) as z:
        items = {n: z.read(n) for n in z.namelist()}
    items[member] = edit(items[member])
    with zipfile.ZipFile(path, "w") as z:
        for n, data in items.items():
            z.writestr(n, data)


def test_xlsx_with_a_wrong_dimension_tag_keeps_every_row(tmp_path):
    import openpyxl

    p = tmp_path / "faq.xlsx"
    wb = openpyxl.Workbook()
    ws = wb.active
    for row in [("question", "answer"), ("Open on Sunday?", "No."), ("Delivery?", "Yes, free above 50 euros.")]:
        ws.append(row)
    wb.save(p)
    # some exporters write <dimension ref="A1"/>; read-only openpyxl would then see one cell
    _rewrite_zip_member(p, "xl/worksheets/sheet1.xml",
                        lambda b: b.replace(b'<dimension ref="A1:B3"/>', b'<dimension ref="A1"/>'))
    assert [u.kind for u in parse(p).units] == ["qa", "qa"]


def test_a_damaged_docx_body_is_a_clear_error(tmp_path):
    import docx

    p = tmp_path / "manual.docx"
    d = docx.Document()
    d.add_paragraph("Some text. " * 50)
    d.save(p)
    _rewrite_zip_member(p, "word/document.xml", lambda b: b[: len(b) // 2])
    with pytest.raises(KBError) as e:
        parse(p)
    assert "manual.docx" in str(e.value) and "Fix:" in str(e.value)
