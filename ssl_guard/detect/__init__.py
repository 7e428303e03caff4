"""Detection: embed, cluster, localize, score, classify and decide (docs/architecture.md)."""
