"""The ground floor: atomic writes, folder locks and file manifests (sizes and sha256). Imports nothing of the kit."""
