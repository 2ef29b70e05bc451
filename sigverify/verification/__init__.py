"""Using a trained run: its model loaded once, a gallery of enrolled writers (SQLite, FAISS search), calibrated
operating points, batch scoring of pairs, and evaluation of the run on another dataset."""
