"""Worker errors.

    WorkerError
    └── CommitConflict   a user's update kept losing its compare-and-set; the batch is redelivered
"""

from __future__ import annotations


class WorkerError(Exception):
    pass


class CommitConflict(WorkerError):
    pass
