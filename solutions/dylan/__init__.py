"""3rd place (dylan, 0.79046): ImageNet CNNs on single 180x180 images, label smoothing, NAdam,
flip TTA, a product = mean of its images' probabilities, models averaged."""
