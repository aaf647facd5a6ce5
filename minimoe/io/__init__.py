"""Reading and writing models: minimoe checkpoints, Hugging Face model folders, atomic writes."""
