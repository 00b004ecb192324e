"""The development stack: never needed on a host.

- ``embedded``: the embedded PostgreSQL standing in for the clusters
- ``stack``: ``invoke up`` / ``down`` / ``status``
- ``service``: the API process of the stack
- ``tls``: the stack's self-signed server certificates
"""
