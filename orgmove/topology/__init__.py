"""The Topology Service (server, store) and its client.

The server is in :mod:`orgmove.topology.server` (``create_app``, ``serve``, ``run_in_thread``);
the client in :mod:`orgmove.topology.client` (``TopologyClient``, ``seed_claims``). Import them
from there: this package does not import the server's dependencies eagerly.
"""
