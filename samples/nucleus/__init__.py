"""matterport's nucleus sample: NucleusConfig and NucleusDataset (nucleus.py)."""
