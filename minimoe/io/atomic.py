"""Atomic writes: a file, or a set of files in one folder, replaced all at once or not at all.

One file (`atomic_path`, `atomic_write_text`): write it under a temporary name beside the target,
flush it to disk, then rename it over the target. A rename within a folder is atomic, so a crash
(kill -9, Ctrl-C, a full disk) leaves the old file or the new one, never half of either.

Files that belong together, such as a checkpoint's config.json, model.safetensors and
tokenizer.json (`atomic_files`):

    with atomic_files(folder) as stage:
        stage.write("model.safetensors", writer)       # each file is written to a temporary name:
        stage.write_text("config.json", text)          # writer(path) writes it there
        stage.remove("tokenizer.json")                 # a file the new version does not have

When the block ends, every file is complete and on disk. Only then is a small journal written
(atomically): .minimoe-commit.json, listing the renames. That is the commit point. The files are
then renamed into place one by one and the journal deleted. A crash before the journal exists
leaves the old files as they were (the temporary ones are garbage); a crash after it leaves a
journal that `recover(folder)` replays, so the folder ends up wholly new. Every load and save
calls `recover` first, so nobody reads half of one version and half of the other.

Temporary files are named .NAME.PID.RANDOM.tmp. `recover` also deletes those whose process is no
longer running, so a killed run leaves nothing behind after the next save or load. New files get
the permissions the umask allows (0644 under the usual umask 022), as any program's files do.
A failure to write raises WriteError naming the file, and leaves the old file in place.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets

from minimoe.errors import WriteError

JOURNAL = ".minimoe-commit.json"
_TEMP = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")       # .NAME.PID.RANDOM.tmp


def temp_name(name: str) -> str:
    """.NAME.PID.RANDOM.tmp: a fresh temporary name for `name`, which says which process made it."""
    return f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def is_stale_temp(name: str) -> bool:
    """A temporary name of ours whose process has died (its file is garbage)."""
    m = _TEMP.match(name)
    return bool(m) and not _alive(int(m.group(1)))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):      # gone, or not a pid at all
        return False
    except PermissionError:                          # alive, but someone else's
        return True
    return True


@contextlib.contextmanager
def writing(path: str):
    """Turn an OSError inside the block into a WriteError that names `path`."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({e.strerror or e})") from None


def _create(path: str) -> None:
    """Create an empty file; the mode 0666 is cut down by the umask, as for any new file."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _fsync(path: str) -> None:
    """Flush a file or a folder's entries to disk (where the platform allows opening a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        if not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


def _discard(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path beside `path`; when the block succeeds, rename it over `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    with writing(path):
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, temp_name(os.path.basename(path)))
        _create(tmp)
    replaced = False
    try:
        with writing(path):
            yield tmp
            _fsync(tmp)
            os.replace(tmp, path)
            replaced = True
            _fsync(folder)
    finally:
        if not replaced:
            _discard(tmp)
    remove_stale_temps(folder, os.path.basename(path))      # what killed writes of it left


def atomic_write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


# ----------------------------------------------------------------------------------------------
# Several files of one folder, committed together
# ----------------------------------------------------------------------------------------------

class Stage:
    """The files of one atomic_files block: `write(name, writer)` writes file `name` with
    writer(path) to a temporary path, `path(name)` just gives that path, and `remove(name)` drops
    a file that the new version does not have."""

    def __init__(self, folder: str):
        self.folder = folder
        self.temps: dict[str, str] = {}          # name -> temporary file name (in folder)
        self.removals: list[str] = []

    def path(self, name: str) -> str:
        _check_plain(name, self.folder)
        tmp = temp_name(name)
        with writing(os.path.join(self.folder, name)):
            _create(os.path.join(self.folder, tmp))
        self.temps[name] = tmp
        return os.path.join(self.folder, tmp)

    def write(self, name: str, writer) -> None:
        """writer(path) writes file `name` (at its temporary path); a failure names `name`."""
        tmp = self.path(name)
        with writing(os.path.join(self.folder, name)):
            writer(tmp)

    def write_text(self, name: str, text: str) -> None:
        def writer(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
        self.write(name, writer)

    def remove(self, name: str) -> None:
        _check_plain(name, self.folder)
        self.removals.append(name)


@contextlib.contextmanager
def atomic_files(folder: str):
    """Write several files of `folder` so that they all change at once (see the module doc)."""
    folder = os.fspath(folder)
    with writing(folder):
        os.makedirs(folder, exist_ok=True)
    recover(folder)
    stage = Stage(folder)
    committed = False
    try:
        yield stage
        for name, tmp in stage.temps.items():
            with writing(os.path.join(folder, name)):
                _fsync(os.path.join(folder, tmp))
        plan = {"replace": [[tmp, name] for name, tmp in stage.temps.items()],
                "remove": [n for n in stage.removals if n not in stage.temps]}
        atomic_write_text(os.path.join(folder, JOURNAL), json.dumps(plan) + "\n")   # the commit point
        committed = True
        with writing(folder):
            _apply(folder, plan)
    finally:
        if not committed:
            for tmp in stage.temps.values():
                _discard(os.path.join(folder, tmp))


def _apply(folder: str, plan: dict) -> None:
    """Carry out a committed journal: rename each file into place, delete the removed ones, then
    the journal. Safe to repeat after a crash at any point (a temporary file already renamed is
    simply gone)."""
    for tmp, name in plan["replace"]:
        with contextlib.suppress(FileNotFoundError):
            os.replace(os.path.join(folder, tmp), os.path.join(folder, name))
    for name in plan["remove"]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(folder, name))
    _fsync(folder)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(folder, JOURNAL))


def recover(folder: str) -> None:
    """Finish a multi-file save that was committed but cut short, and delete the temporary files
    of processes that died. Called before every load and save of a folder."""
    from minimoe.io.json_file import read_json
    folder = os.fspath(folder)
    journal = os.path.join(folder, JOURNAL)
    if os.path.exists(journal):
        plan = read_json(journal, WriteError, expect=dict)
        ok = (isinstance(plan.get("replace"), list) and isinstance(plan.get("remove"), list)
              and all(isinstance(p, list) and len(p) == 2 and _TEMP.match(str(p[0])) and _plain(p[1])
                      for p in plan["replace"])
              and all(_plain(n) for n in plan["remove"]))
        if not ok:
            raise WriteError(f"{journal}: not a journal minimoe wrote; move it away to load this folder")
        try:
            _apply(folder, plan)
        except OSError as e:
            raise WriteError(f"{folder}: a save into this folder was interrupted after it was committed; "
                             f"finishing it needs write access ({e.strerror or e})") from None
    remove_stale_temps(folder)


def remove_stale_temps(folder: str, of: str | None = None) -> None:
    """Delete the temporary files in `folder` (only those of file `of`, if given) left by
    processes that no longer run."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if (of is None or name.startswith(f".{of}.")) and is_stale_temp(name):
            path = os.path.join(folder, name)
            if os.path.isdir(path) and not os.path.islink(path):
                import shutil
                shutil.rmtree(path, ignore_errors=True)
            else:
                _discard(path)


def _plain(name) -> bool:
    """A file name with no folder part: it cannot point outside the folder it is in."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\\" not in name and "\0" not in name)


def _check_plain(name: str, folder: str) -> None:
    if not _plain(name):
        raise WriteError(f"{folder}: {name!r} is not a plain file name")
