"""The admin API: policy, bypass grants, overrides and counters, changed safely."""
