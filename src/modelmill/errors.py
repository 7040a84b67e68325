"""Errors meant for people: each names where the problem is and how to fix it.

The CLI prints ``str(err)`` on one line and exits non-zero; the REST layer will turn the
same fields into a JSON body.
"""

from __future__ import annotations


class ModelmillError(Exception):
    """A problem the user can fix. ``str()`` is one line: where, what, and the fix."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, fix: str | None = None):
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:  # one line, e.g. "data.jsonl:3: field 'output': missing. Fix: ..."
        where = ""
        if self.file:
            where = str(self.file) + (f":{self.line}" if self.line is not None else "")
        elif self.line is not None:
            where = f"line {self.line}"
        parts = []
        if where:
            parts.append(where + ":")
        if self.field:
            parts.append(f"field '{self.field}':" if not self.field.startswith("--") else f"{self.field}:")
        parts.append(self.message.rstrip("."))
        text = " ".join(parts) + "."
        if self.fix:
            text += " Fix: " + self.fix.rstrip(".") + "."
        return text.replace("\n", " ")


class InputError(ModelmillError):
    """Bad user input: a data file, a flag, a config value."""


class NotFoundError(ModelmillError):
    """A named model, adapter or dataset that is not in the registry."""

    exit_code = 3


class ConflictError(ModelmillError):
    """A name that is already taken, or an adapter used with the wrong base."""

    exit_code = 4


class StorageError(ModelmillError):
    """The disk said no: full, over quota, read-only, or not ours to write."""

    exit_code = 6


def storage_error(e: BaseException) -> StorageError | None:
    """An OSError of the disk (full, quota, read-only, permission) as one line with the fix; None for
    any other error. Writers stage into tmp/ and rename, so nothing half-written is kept."""
    import errno

    code = e.errno if isinstance(e, OSError) else None
    if code is None:  # libraries that wrap the OS's error in their own (safetensors, torch.save)
        text = str(e)
        for n, words in ((errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system"),
                         (errno.EDQUOT, "Disk quota exceeded")):
            if words in text or f"os error {n})" in text:
                code = n
                break
    fixes = {errno.ENOSPC: ("no space left on the device", "free space there (or point MODELMILL_HOME at a "
                                                            "bigger disk) and run it again"),
             errno.EDQUOT: ("over the disk quota", "free space within your quota and run it again"),
             errno.EROFS: ("the file system is read-only", "remount it read-write, or point MODELMILL_HOME at a "
                                                            "writable folder"),
             errno.EACCES: ("permission denied", "give this user write access there, or point MODELMILL_HOME at "
                                                 "a folder it owns")}
    if code not in fixes:
        return None
    what, fix = fixes[code]
    return StorageError(f"{what}; what was being written is not kept, everything stored before is unchanged",
                        file=getattr(e, "filename", None), fix=fix)


class EngineError(Exception):
    """A request to a served model (an engine, the embedder, an app) failed; ``status``, ``code`` and
    ``param`` become the OpenAI-shaped HTTP error. It lives here, below serve/ and models/, so that
    every layer that answers such requests raises the same thing."""

    def __init__(self, message: str, status: int = 400, code: str | None = None, param: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param
        self.retry_after = retry_after
