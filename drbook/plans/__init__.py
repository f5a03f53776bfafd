"""Recovery plans: ordered groups of machines with actions before and after each group, one
plan for test failover, failover and failback (plans/*.yaml)."""
