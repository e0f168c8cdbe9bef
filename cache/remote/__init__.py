"""The team's remote tier: its address, the lookups before the origin, and the fills after."""
