"""The one file of a `multipart/form-data` upload (what `curl -F file=@report.pdf` and a browser's
`FormData` send), read with the standard library's MIME parser: no extra dependency for one field.

Must not know what the file is for: it returns a name and bytes, or says what is wrong with the form.
"""

from __future__ import annotations

from email import policy
from email.parser import BytesParser

from luodi.errors import InvalidParameterError


def form_file(content_type: str, body: bytes, field: str = "file") -> tuple[str, bytes]:
    """(filename, content) of the form's `field`; InvalidParameterError naming the problem otherwise."""
    how = f"send the document as multipart/form-data with a {field!r} field (curl -F {field}=@report.pdf)"
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type:
        raise InvalidParameterError(f"the request is not a multipart/form-data upload; {how}", param=field)
    header = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    form = BytesParser(policy=policy.HTTP).parsebytes(header + body)
    for part in form.iter_parts() if form.is_multipart() else ():
        if part.get_param("name", header="content-disposition") != field:
            continue
        filename = part.get_filename()
        if not filename:
            raise InvalidParameterError(f"the {field!r} field carries no file name; {how}", param=field)
        return filename, part.get_payload(decode=True) or b""
    raise InvalidParameterError(f"the form has no {field!r} field; {how}", param=field)
