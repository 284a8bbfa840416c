"""Whether the file driver's session directory is private, and stays so while it runs.

File names are session ids, so whoever can list the session directory holds every live
session. Two checks, both at driver creation (option ``check_permissions``, default on):

* :func:`check_private`: the directory itself belongs to this process's user and grants
  group and others nothing (no bit of 0o077).
* :func:`check_path`: nobody else can put another directory in its place. A directory
  that another user can write to lets them rename any entry in it: with ``mv sessions
  sessions.gone && mkdir sessions && chmod 777 sessions`` in the parent, a running app
  writes its next sessions into the attacker's directory. So every directory on the way
  from ``/`` to the session directory must belong to root or to this process's user
  (its owner can rename entries in it), and must not be writable by group or others
  unless it has the sticky bit (POSIX's restricted deletion flag: then only an entry's
  owner, the directory's owner and root may rename or remove it, which is why ``/tmp``
  at 1777 is fine). This is OpenSSH's rule for the path to ``authorized_keys``
  (``safe_path()``, ``StrictModes``: owned by root or the user, no ``022`` bit), with
  the sticky bit as the one relaxation. POSIX ACLs are covered: an ACL entry that grants
  write shows as the group write bit (the group class bits are the ACL mask).

Symlinks: the path is resolved once, here, and the driver then names files only under
the resolved path, so a symlink cannot redirect a running driver. It is still judged,
because every worker and every ``python -m aiosessmgr gc`` resolves it again when it
starts: the walk follows each symlink the way the kernel does, and the directory that
holds a symlink is a directory on the way like any other (checked by the rule above),
and the symlink itself must belong to root or this user (in a sticky directory its
owner could replace it). The session directory is what the walk ends on.
"""

from __future__ import annotations

import os
import shlex
import stat
from typing import Final, NoReturn

from ...errors import ConfigError

__all__ = ["SHARED_BITS", "check_path", "check_private"]

#: the mode bits of group and others; a session directory with any of them is refused
SHARED_BITS: Final = 0o077
#: group and other write: a directory on the way with either is refused unless sticky
_WRITE_BITS: Final = stat.S_IWGRP | stat.S_IWOTH
#: symlinks one resolution may follow (Linux's MAXSYMLINKS)
_MAX_LINKS: Final = 40
_OPT_OUT: Final = 'set the driver option "check_permissions": false to use it as it is'


def _shown(path: str, resolved: str) -> str:
    return repr(path) if resolved == path else f"{path!r} (resolved: {resolved!r})"


def check_private(resolved: str, path: str) -> None:
    """ConfigError unless *resolved* is owned by this user and closed to group and others.

    *path* is the configured path the message names beside *resolved*.
    """
    st = os.stat(resolved)
    uid, mode = os.geteuid(), stat.S_IMODE(st.st_mode)
    quoted = shlex.quote(resolved)
    if st.st_uid != uid:
        problem = (f"belongs to uid {st.st_uid}, not to this process's user (uid {uid}): "
                   f"its owner can list every session id in it")
        fix = f"chown {uid} {quoted} && chmod 700 {quoted}"
    elif mode & SHARED_BITS:
        problem = (f"has mode {mode:04o}: group or others may list it (file names are "
                   f"session ids) or add files to it")
        fix = f"chmod 700 {quoted}"
    else:
        return
    raise ConfigError(f"file driver: session directory {_shown(path, resolved)} {problem}; "
                      f"fix it with `{fix}`, or {_OPT_OUT}")


def check_path(path: str, resolved: str) -> None:
    """ConfigError unless no one but root and this user can replace what *path* names.

    Walks *path* from ``/`` as the kernel resolves it (following symlinks, at most 40):
    each directory a name is looked up in must belong to root or this process's user
    and not be writable by group or others unless it has the sticky bit (a directory
    only passed through by ``..`` is not judged: nothing in it is looked up); each
    symlink followed must belong to root or this user. The directory the walk ends on
    (the session directory, judged by :func:`check_private`) must be *resolved*. The
    error names the offending directory or symlink, its mode and owner, and how to fix
    it; a path that cannot be walked (a component gone meanwhile, more than 40
    symlinks) is a ConfigError too.
    """
    uid = os.geteuid()
    current = "/"
    links = 0
    try:
        absolute = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
        todo = [part for part in reversed(absolute.split("/")) if part]  # next on top
        while todo:
            name = todo.pop()
            if name == ".":
                continue
            if name == "..":
                current = os.path.dirname(current)
                continue
            # a name is looked up in *current*: who can change its entries matters
            _check_on_the_way(path, resolved, current, os.lstat(current), uid)
            entry = os.path.join(current, name)
            st = os.lstat(entry)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_LINKS:
                    raise ConfigError(f"file driver: session directory {path!r}: more than "
                                      f"{_MAX_LINKS} symlinks on its path")
                _check_link(path, resolved, entry, st, uid)
                target = os.readlink(entry)
                if target.startswith("/"):
                    current = "/"
                todo += [part for part in reversed(target.split("/")) if part]
                continue
            current = entry
        same = os.path.samestat(os.stat(current), os.stat(resolved))
    except OSError as exc:
        raise ConfigError(f"file driver: cannot check the path of session directory "
                          f"{path!r}: {exc}") from exc
    if not same:
        raise ConfigError(f"file driver: session directory {path!r} changed while its path "
                          f"was checked (now {current!r}, was {resolved!r})")


def _check_on_the_way(path: str, resolved: str, directory: str, st: os.stat_result,
                      uid: int) -> None:
    """The rule for a directory on the way: owned by root or *uid*; no group or other
    write bit unless sticky."""
    mode = stat.S_IMODE(st.st_mode)
    quoted = shlex.quote(directory)
    if st.st_uid not in (0, uid):
        problem = (f"belongs to uid {st.st_uid} (mode {mode:04o}), neither root nor this "
                   f"process's user (uid {uid}): its owner can move the session "
                   f"directory (or the directory holding it) away and put one of their own "
                   f"in its place")
        fix = f"fix it with `chown {uid} {quoted}`"
    elif mode & _WRITE_BITS and not mode & stat.S_ISVTX:
        problem = (f"has mode {mode:04o} (owner uid {st.st_uid}): group or others may write "
                   f"to it, and without the sticky bit that lets them move the "
                   f"session directory (or the directory holding it) away and put one of "
                   f"their own in its place")
        fix = f"fix it with `chmod g-w,o-w {quoted}` or `chmod +t {quoted}`"
    else:
        return
    _refuse(path, resolved, f"the directory {directory!r} on its path {problem}", fix)


def _check_link(path: str, resolved: str, link: str, st: os.stat_result, uid: int) -> None:
    """A symlink followed on the way must belong to root or *uid*."""
    if st.st_uid in (0, uid):
        return
    problem = (f"the symlink {link!r} on its path belongs to uid {st.st_uid}, neither root "
               f"nor this process's user (uid {uid}): its owner can point it elsewhere")
    _refuse(path, resolved, problem,
            f"configure the resolved path {shlex.quote(resolved)} instead")


def _refuse(path: str, resolved: str, problem: str, fix: str) -> NoReturn:
    raise ConfigError(
        f"file driver: session directory {_shown(path, resolved)}: {problem}; {fix}, "
        f"or move the session directory to a path only root and this user can "
        f"change, or {_OPT_OUT}"
    )
