"""The exercise files students copy and fill in (`minimoe grade --start NAME`)."""
