"""The one durable, all-or-nothing way every writer of the pack saves files: FileBatch (one file: atomic_write),
created with the process umask as ComfyUI's savers create theirs, plus the output-prefix check the savers share."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from typing import Iterator

# Names of atomic_write's temporary files: a run killed mid-write leaves them, and its next run may delete them.
TEMPORARY_PREFIX = ".partial-"

# Files are created as ComfyUI's savers create theirs (``open``): this mode less the process umask, which the kernel
# applies when the file is created, so nothing has to read the umask (mkstemp's 0o600 would hide every output from
# a web server or the other users of a shared output folder).
NEW_FILE_MODE = 0o666
TEMPORARY_NAME_TRIES = 100


class FileSaveError(OSError):
    """A file that could not be saved; the message names the path, what is in the way and what to do."""


def fsync_folder(folder: str) -> None:
    """Flush a folder's entries, so a rename inside it survives a power loss (a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def fsync_file(path: str) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def file_in_place_of_folder(path: str) -> str | None:
    """The file standing where ``path`` or one of the folders above it would have to be a folder, or None: the
    nearest existing path at or above ``path`` when that is not a folder."""
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
    return None if os.path.isdir(current) else current


def explain_os_error(error: OSError, path: str | None = None) -> str:
    """An OSError in one line that says what is wrong with which path and what to do, instead of ``[Errno 20] Not a
    directory``. ``path`` stands in where the error names none (a failed ``write``)."""
    if isinstance(error, FileSaveError):
        return str(error)
    code = error.errno
    named = error.filename2 if code == errno.EISDIR and error.filename2 is not None else error.filename
    where = os.fsdecode(named) if named is not None else path
    if where is None:
        return error.strerror or str(error)
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocking = file_in_place_of_folder(where)
        if blocking is not None:
            return f"{blocking} is a file where a folder is needed; move or rename that file, or choose another place"
    if code == errno.EISDIR:
        return f"{where} is a folder where a file is needed; move or rename that folder, or choose another name"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied for {where}; give this user access to it, or choose another place"
    if code == errno.EROFS:
        return f"{where} is on a read-only file system; choose another place"
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"no space left for {where} (disk full or quota reached); free some space"
    return f"{where}: {error.strerror or error}"


def _save_error(error: OSError, target: str) -> FileSaveError:
    saved = FileSaveError(f"cannot save {target}: {explain_os_error(error, target)}")
    saved.errno = error.errno
    return saved


def _create_temporary(folder: str, suffix: str) -> tuple[str, int]:
    """A new empty file with a random ``TEMPORARY_PREFIX`` name in ``folder`` (created as needed), and the
    permission bits the kernel gave it: ``NEW_FILE_MODE`` less the umask. ``O_EXCL`` makes it ours alone, as mkstemp
    does."""
    os.makedirs(folder, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(TEMPORARY_NAME_TRIES):
        temporary = os.path.join(folder, f"{TEMPORARY_PREFIX}{secrets.token_hex(8)}{suffix}")
        try:
            descriptor = os.open(temporary, flags, NEW_FILE_MODE)
        except FileExistsError:
            continue
        try:
            return temporary, stat.S_IMODE(os.fstat(descriptor).st_mode)
        finally:
            os.close(descriptor)
    raise FileExistsError(errno.EEXIST, "no free temporary file name", folder)


def _set_aside(path: str) -> str:
    """Rename ``path`` to a new temporary name in its folder and return that name."""
    aside, _ = _create_temporary(os.path.dirname(path), "")
    try:
        os.replace(path, aside)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(aside)
        raise
    return aside


class FileBatch:
    """Files saved together, all or none: each is written to a temporary file next to its target, and only when the
    block ends without error are they published (renamed into place, fsynced). A failure anywhere, while writing or
    while publishing, removes every temporary file and every file the batch had already published (a file one of
    them had replaced is put back), so a save that fails half-way through a batch leaves nothing of its own.

        with FileBatch() as batch:
            batch.write_bytes(exr_path, data)
            image.save(batch.temporary(preview_path, suffix=".png"))

    Each file is durable as with a single atomic write: fsync of the file before its rename, of its folder after,
    so a crash leaves the old or the complete new file, never a half-written or (after a power loss) empty one.
    Errors of the batch's own steps are raised as :class:`FileSaveError` naming the file and the fix.
    """

    def __init__(self):
        self._files: list[tuple[str, str, int]] = []  # (temporary, target, mode), in the order they were asked for

    def __enter__(self) -> "FileBatch":
        return self

    def __exit__(self, kind, error, trace) -> bool:
        if kind is None:
            self._publish()
        else:
            self._remove_temporaries()
        return False

    def temporary(self, path: str, suffix: str = "") -> str:
        """A new empty file in ``path``'s folder for the caller to write; it becomes ``path`` when the batch is
        published. ``suffix`` keeps an extension for writers that insist on one (``np.save`` adds ``.npy``)."""
        target = os.path.abspath(path)
        if any(target == known for _, known, _ in self._files):
            raise ValueError(f"{target} is saved twice in one batch")
        try:
            temporary, mode = _create_temporary(os.path.dirname(target), suffix)
        except OSError as error:
            raise _save_error(error, target) from error
        self._files.append((temporary, target, mode))
        return temporary

    def write_bytes(self, path: str, data: bytes) -> None:
        temporary = self.temporary(path)
        try:
            with open(temporary, "wb") as stream:
                stream.write(data)
        except OSError as error:
            raise _save_error(error, os.path.abspath(path)) from error

    def _publish(self) -> None:
        published: list[str] = []                     # targets that hold this batch's file now
        set_aside: list[tuple[str, str]] = []         # (target, where the file it held waits meanwhile)
        target = None
        try:
            for temporary, target, mode in self._files:
                # A writer that renames its own new file over the temporary (safetensors' save_file does, with
                # 0o600) gets the mode the temporary was created with back.
                if stat.S_IMODE(os.stat(temporary).st_mode) != mode:
                    os.chmod(temporary, mode)
                fsync_file(temporary)
            for _, target, _ in self._files:
                if os.path.isdir(target) and not os.path.islink(target):
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), target)
            last = len(self._files) - 1
            for position, (temporary, target, _) in enumerate(self._files):
                # A file that a later failure could make us take back keeps what it replaced; the last one cannot be
                # taken back, so it replaces its target in one rename, as a single atomic write does.
                if position < last and os.path.lexists(target):
                    set_aside.append((target, _set_aside(target)))
                os.replace(temporary, target)
                published.append(target)
        except BaseException as error:
            for path in published:
                with contextlib.suppress(OSError):
                    os.remove(path)
            for path, aside in set_aside:
                with contextlib.suppress(OSError):
                    os.replace(aside, path)
            self._remove_temporaries()
            if isinstance(error, OSError) and not isinstance(error, FileSaveError):
                raise _save_error(error, target) from error
            raise
        for folder in dict.fromkeys(os.path.dirname(target) for _, target, _ in self._files):
            fsync_folder(folder)
        for _, aside in set_aside:
            with contextlib.suppress(OSError):
                os.remove(aside)

    def _remove_temporaries(self) -> None:
        for temporary, _, _ in self._files:
            with contextlib.suppress(OSError):
                os.remove(temporary)


@contextlib.contextmanager
def atomic_write(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder; when the block ends without error, publish it as ``path``
    (a :class:`FileBatch` of one file: durable, and an error leaves neither ``path`` nor the temporary file)."""
    with FileBatch() as batch:
        yield batch.temporary(path, suffix)


def atomic_write_bytes(path: str, data: bytes) -> None:
    with FileBatch() as batch:
        batch.write_bytes(path, data)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_tree(folder: str) -> None:
    """fsync every file and folder under ``folder`` (before renaming a whole folder into place)."""
    for root, _, names in os.walk(folder):
        for name in names:
            full = os.path.join(root, name)
            if os.path.isfile(full) and not os.path.islink(full):
                fsync_file(full)
        fsync_folder(root)


def atomic_publish_folder(partial: str, final: str) -> None:
    """Rename a fully written folder into place durably: its contents, then the rename, reach the disk."""
    fsync_tree(partial)
    os.replace(partial, final)
    fsync_folder(os.path.dirname(os.path.abspath(final)))


# A file name is at most 255 bytes on common filesystems; savers add a counter, a suffix and an extension (and a
# preview name adds a random part), so the prefix's own name part is kept well below that.
MAX_PREFIX_NAME_BYTES = 200


def check_filename_prefix(prefix: str, output_dir: str | None = None) -> str:
    """Refuse a save node's filename_prefix that the filesystem would refuse (with a bare OSError) before any file
    is opened: control characters such as NUL, a folder or file name part longer than a file name can be, or (given
    the output folder) a folder part that is a file there."""
    bad = sorted({f"U+{ord(char):04X}" for char in prefix if ord(char) < 32 or ord(char) == 127})
    if bad:
        raise ValueError(f"filename_prefix contains control characters ({', '.join(bad)}), which file names cannot "
                         "hold; remove them (type the prefix again)")
    for part in prefix.replace("\\", "/").split("/"):
        size = len(part.encode("utf-8", "surrogatepass"))
        if size > MAX_PREFIX_NAME_BYTES:
            raise ValueError(f"filename_prefix has a name part of {size} bytes ('{part[:24]}...'); file names are "
                             f"limited to 255 bytes including the counter and extension: shorten it to at most "
                             f"{MAX_PREFIX_NAME_BYTES}, or use '/' to make subfolders")
    if output_dir is not None:
        subfolder = os.path.dirname(os.path.normpath(prefix))       # the folder part, as ComfyUI's savers take it
        blocking = file_in_place_of_folder(os.path.join(output_dir, subfolder)) if subfolder else None
        if blocking is not None:
            raise ValueError(f"filename_prefix '{prefix}' saves into the folder '{subfolder}', but {blocking} is a "
                             "file; choose another filename_prefix, or move or rename that file")
    return prefix
