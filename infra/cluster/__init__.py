"""The database part of the Pulumi program: self-hosted nodes or a CockroachDB Cloud cluster,
their certificates, backups and network allowlist."""
