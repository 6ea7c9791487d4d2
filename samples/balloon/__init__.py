"""matterport's balloon sample: BalloonConfig and BalloonDataset (balloon.py)."""
