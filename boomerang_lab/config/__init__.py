"""Settings: every configuration dataclass, the profiles and their schema. Below every stage: importing it pulls in
no trainer, no accelerate and no datasets."""
