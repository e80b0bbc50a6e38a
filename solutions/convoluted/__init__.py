"""2nd place (convoluted predictions, 0.79352): single-image base nets whose stored features feed
fusion heads over a product's views, rank / count specialists, a weighted sqrt team blend."""
