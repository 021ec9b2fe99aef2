"""What a plugin's process changed outside its own folder: the run folder and the dump,
compared before and after it ran (vitscope.analyze.isolation).

    before = Snapshot.take(run_dir, skip=staging_folder)
    ...plugin runs...
    Snapshot.take(run_dir, skip=staging_folder).changed_since(before)   # ["rollout/rollout.png"]
    identity(dump) != identity_before                                    # the dump was touched

Where the kernel enforces the plugin's write limits (Landlock, vitscope._internal.sandbox) a
change cannot happen; elsewhere this is how one is found, so that nothing the plugin touched
is published and a damaged dump is never reused. Entries are compared by inode, size,
modification and status-change time (`st_ctime`, which no unprivileged process can set back),
without following links.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

MAX_ENTRIES = 200_000      # a run folder holds hundreds; a walk stops here rather than hang


def identity(path: Path) -> tuple[int, int, int, int, int] | None:
    """(device, inode, size, mtime_ns, ctime_ns) of `path` itself, None when it is missing."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


@dataclass
class Snapshot:
    """Every entry under a folder (relative path -> identity), `skip` left out."""
    entries: dict[str, tuple] = field(default_factory=dict)

    @classmethod
    def take(cls, root: Path, skip: tuple[Path, ...] = ()) -> "Snapshot":
        root = Path(root)
        skipped = {os.path.normpath(str(s)) for s in skip}
        entries: dict[str, tuple] = {}
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(folder, d)) not in skipped]
            for name in [*dirs, *files]:
                full = os.path.join(folder, name)
                key = os.path.relpath(full, root)
                found = identity(Path(full))
                if found is not None:
                    # a folder's times change whenever an entry is added; its entries say that
                    entries[key] = found if name in files else found[:2]
            if len(entries) > MAX_ENTRIES:
                break
        return cls(entries)

    def changed_since(self, before: "Snapshot") -> list[str]:
        """Paths added, removed or changed since `before`, sorted."""
        keys = set(self.entries) | set(before.entries)
        return sorted(k for k in keys if self.entries.get(k) != before.entries.get(k))
