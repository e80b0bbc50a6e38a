"""1st place (bestfitting, 0.79567): one model per image count K, fed the product's K images
composed into one input (side by side, as the winner did, or a 2x2 grid)."""
