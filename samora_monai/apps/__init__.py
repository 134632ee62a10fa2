"""Applications a user runs end to end (demo, comparison, the stand-in SAM pre-training); the core packages never
import them."""
