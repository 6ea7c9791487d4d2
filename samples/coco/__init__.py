"""matterport's COCO sample: CocoConfig and CocoDataset (coco.py)."""
