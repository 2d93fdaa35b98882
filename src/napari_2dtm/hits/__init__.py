"""Working on hits: local scoring, pose refinement, inspection and the review model."""
