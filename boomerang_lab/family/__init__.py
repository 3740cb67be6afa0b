"""The family: zero-copy members of every size, patch orders (named, explicit, KL-searched) and measured speed."""
