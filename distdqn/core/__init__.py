"""The algorithm core: pure PyTorch and NumPy. No Ray, no sockets, no files, no processes."""
