"""Two-way sync between the local database and the cluster that never loses a row.

Design and proof: ``docs/sync.md``. Modules, in the order a run uses them:

``tables``     which tables are synced (one place) and their validation
``state``      sync_node (identity, pairing) and sync_state (per table and direction)
``lease``      one run at a time, without advisory locks
``capture``    the source side: pending changes, reading them, acknowledging them
``rule``       last writer wins by the database's version, ties by origin
``apply``      the target side: one locked transaction per batch, conflicts recorded
``reconcile``  ``--full``: compare by key and row hash in ranges, repair by the same rule
``run``        one complete pass; ``status`` what ``cesar sync status`` shows; ``cli`` both
``health``     the sync lag for ``/health``, ``/metrics`` and ``cesar smoke``
"""
