"""Streaming multipart/form-data parsing into a private directory, with a size limit.

Files are written as they arrive under names WE choose (``<field>.upload``, plus a
suffix from an allow-list when the field needs one), never the client's file
name; text fields are kept in memory (bounded). The whole body is counted: past
``max_bytes`` parsing stops at once with UploadTooLarge (HTTP 413), so an
oversize upload is never read in full or written to disk in full.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from rewas_rt.errors import InputError

MAX_FIELD_BYTES = 64 * 1024  # a text field (the prompt is far below this)
MAX_PARTS = 64


class UploadTooLarge(InputError):
    pass


class BadUpload(InputError):
    pass


@dataclasses.dataclass
class Upload:
    fields: dict[str, str]
    files: dict[str, Path]  # field name -> our path inside the private directory
    filenames: dict[str, str]  # field name -> the client's file name (informational only)
    size: int  # body bytes read


async def parse_multipart(content_type: str, body: AsyncIterator[bytes], directory: Path, max_bytes: int,
                          file_fields: dict[str, tuple[str, ...]]) -> Upload:
    """Parse a multipart body into ``directory``.

    ``file_fields`` maps each accepted file field to its allowed suffixes (lower
    case; empty tuple: any content, stored without suffix). Unknown file fields
    and repeated fields are refused; so is a suffix outside the allow-list.
    """
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise BadUpload("the request must be multipart/form-data (a video file and form fields)")
    state = _State(directory, file_fields)
    parser = MultipartParser(params[b"boundary"], state.callbacks())
    size = 0
    try:
        async for chunk in body:
            size += len(chunk)
            if size > max_bytes:
                raise UploadTooLarge(f"upload larger than the limit of {max_bytes / 2**20:g} MiB")
            parser.write(chunk)
            if state.error:
                raise state.error
        parser.finalize()
    except FormParserError as e:
        raise BadUpload(f"malformed multipart body ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None
    finally:
        state.close()
    if state.error:
        raise state.error
    if state.open_part:
        raise BadUpload("malformed multipart body (it ends inside a part)")
    return Upload(state.fields, state.files, state.filenames, size)


class _State:
    def __init__(self, directory: Path, file_fields: dict[str, tuple[str, ...]]):
        self.dir, self.file_fields = directory, file_fields
        self.fields: dict[str, str] = {}
        self.files: dict[str, Path] = {}
        self.filenames: dict[str, str] = {}
        self.error: InputError | None = None
        self.open_part = False
        self._parts = 0
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._file = None
        self._text = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.part_begin,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
            "on_header_field": lambda d, s, e: self._add(d, s, e, "_header_field"),
            "on_header_value": lambda d, s, e: self._add(d, s, e, "_header_value"),
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
        }

    def _fail(self, err: InputError) -> None:
        if self.error is None:
            self.error = err

    def _add(self, data: bytes, start: int, end: int, attr: str) -> None:
        value = getattr(self, attr) + data[start:end]
        if len(value) > 8192:
            self._fail(BadUpload("malformed multipart body (a part header is too long)"))
            return
        setattr(self, attr, value)

    def part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            self._fail(BadUpload(f"too many form fields (at most {MAX_PARTS})"))
        self.open_part = True
        self._headers, self._name, self._file, self._text = {}, None, None, bytearray()

    def header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if disposition != b"form-data" or not name:
            self._fail(BadUpload("malformed multipart body (a part without a form-data name)"))
            return
        if name in self.fields or name in self.files:
            self._fail(BadUpload(f"field {name!r} given more than once"))
            return
        self._name = name
        if b"filename" in options:
            allowed = self.file_fields.get(name)
            if allowed is None:
                self._fail(BadUpload(f"unexpected file field {name!r} (files: {', '.join(self.file_fields)})"))
                return
            client_name = options[b"filename"].decode("utf-8", "replace")
            suffix = Path(client_name).suffix.lower() if allowed else ""
            if allowed and suffix not in allowed:
                self._fail(BadUpload(f"{name}: the file name must end in {' or '.join(allowed)}"))
                return
            path = self.dir / f"{name}.upload{suffix}"  # our name; the client's is never a path
            self.files[name], self.filenames[name] = path, client_name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._file = os.fdopen(fd, "wb")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error or self._name is None:
            return
        if self._file is not None:
            self._file.write(data[start:end])
        else:
            self._text += data[start:end]
            if len(self._text) > MAX_FIELD_BYTES:
                self._fail(BadUpload(f"field {self._name!r} is longer than {MAX_FIELD_BYTES // 1024} KiB"))

    def part_end(self) -> None:
        self.open_part = False
        if self.error or self._name is None:
            return
        if self._file is not None:
            self._file.close()
            self._file = None
        else:
            try:
                self.fields[self._name] = self._text.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(BadUpload(f"field {self._name!r} is not UTF-8 text"))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
