"""The Pulumi program (``pulumi up``): CockroachDB clusters, allowlists and monitoring.

``Pulumi.yaml`` points at this directory; ``__main__.py`` is three lines. The resources are built
by ComponentResources in the modules beside it (``selfhosted``, ``cloud``, ``monitoring``,
``certs``) and everything they compute comes from pure modules the tests call directly
(``settings``, ``images``, ``naming``, ``rules``, ``prometheus_config``, ``alertmanager_config``,
``grafana``, ``monitoring_files``, ``metrics``). See docs/infra.md.
"""
