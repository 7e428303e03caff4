"""Detection: embed, cluster, localize, score, classify and decide (DESIGN §2)."""
