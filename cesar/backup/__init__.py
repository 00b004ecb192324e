"""Backups of the local PostgreSQL server, point-in-time restores, and the drill that proves them.

PostgreSQL (verified for real, in the tests): the server archives every WAL segment with its own
``archive_command`` into a repository directory (gzip-compressed, written atomically, fsynced)
and ``pg_basebackup`` takes base backups beside them, each with its manifest. A restore copies a
base backup into a scratch data directory, replays the archive to a point in time on a scratch
server, and (``restore --into``) copies the recovered database into a new database beside the
live one. The drill does the same to a named restore point and compares per-table fingerprints.

Layout of a repository (``.cesar/backups`` for the embedded stack)::

    base/<label>/          pg_basebackup -Fp -X stream, backup_manifest, cesar-backup.json
    wal/<segment>.gz       archived WAL (the server's archive_command)
    bin/                   archive-wal, restore-wal: the shell commands the server runs
    state/                 last-drill.json, last-backup.json
    scratch/               scratch servers of restores and drills (removed after each)

CockroachDB (written deliberately, pinned by golden files): ``cesar.backup.cockroach`` generates
the backup schedules, the restore and the verification SQL.
"""
