"""Hostile PDF files built in the tests themselves: a page tree that lies about its page count,
and a few kilobytes whose one page takes seconds to render."""

from __future__ import annotations

import io
import zlib


def pdf_file(objects: list[bytes]) -> bytes:
    """A PDF of ``objects`` (numbered from 1; object 1 is the catalog) with a valid xref table."""
    out, offsets = io.BytesIO(), []
    out.write(b"%PDF-1.7\n")
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % offset for offset in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def lying_page_tree() -> bytes:
    """A PDF whose page tree claims 3 pages (/Count 3) but holds one."""
    return pdf_file([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 3 >>",
                     b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 100] >>"])


def runaway_pdf(curves: int = 200_000) -> bytes:
    """A 35 KB PDF whose one page strokes 200,000 Bezier curves: 18 s to render at 72 dpi with PDFium
    on this project's quiet 2-core machine (20,000 took 1.8 s there and up to 10 s on a loaded one,
    too close to a test's 3 s deadline to be sure to pass it), far past any test deadline however
    fast the machine. Flate makes the repeated drawing operators tiny."""
    content = zlib.compress(b"1 w\n" + b"10 10 m 90 190 190 10 290 190 c 590 10 390 590 10 790 c S\n" * curves, 9)
    return pdf_file([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                     b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
                     b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content) + content + b"\nendstream"])
