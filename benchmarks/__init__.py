"""Side-by-side measurements against peers; each prints a table, then one JSON line with ours, peer, ratio."""
