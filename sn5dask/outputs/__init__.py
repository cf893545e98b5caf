"""What a run leaves under OUT: the layout of every path, the manifest and its resume
rules, the STAC catalog, validation, and the training loader that reads it all back."""
