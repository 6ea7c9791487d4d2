"""matterport's shapes sample: ShapesDataset, ShapesConfig and the command line (shapes.py)."""
