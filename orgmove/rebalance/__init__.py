"""Automated rebalancing: a load model of the Cells, pure proposals, and moves queued on
procrastinate in the Topology Service's database (docs/adr/0007-rebalance-on-procrastinate.md)."""
